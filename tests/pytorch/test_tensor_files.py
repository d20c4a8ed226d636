"""Checkpoints read without torch hold exactly what torch reads from them."""

from __future__ import annotations

import argparse
import collections

import jax.numpy as jnp
import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from jackpot_jax.pytorch import read_checkpoint, weights_sha256
from jackpot_jax.pytorch import tensor_files


def _every_kind_of_tensor() -> dict[str, torch.Tensor]:
  """Each dtype a checkpoint holds, views sharing a storage, a transposed (strided) one,
  a scalar and an empty tensor, with denormals and -0.0 among the values."""
  torch.manual_seed(0)
  weight = torch.randn(6, 4)
  weight[0, 0], weight[0, 1] = -0.0, 1e-40
  tensors = collections.OrderedDict(
      weight=weight, row=weight[2], transposed=weight.t(), column=weight[:, 1],
      half=torch.randn(3, 2).half(), bf16=torch.randn(5, 3).to(torch.bfloat16),
      double=torch.randn(2, dtype=torch.float64), counter=torch.tensor(7),
      int32=torch.arange(4, dtype=torch.int32), int16=torch.arange(3, dtype=torch.int16),
      int8=torch.arange(-2, 2, dtype=torch.int8), uint8=torch.arange(5, dtype=torch.uint8),
      flags=torch.tensor([True, False, True]), empty=torch.zeros(0, 3))
  tensors["bf16_rows"] = tensors["bf16"][1:4]
  return tensors


def _assert_same(arrays: dict, tensors: dict) -> None:
  assert list(arrays) == list(tensors)
  for name, tensor in tensors.items():
    expected = tensor_files.as_array(tensor)
    assert arrays[name].dtype == expected.dtype, name
    assert arrays[name].shape == expected.shape, name
    assert arrays[name].tobytes() == expected.tobytes(), name


def test_a_zip_checkpoint_reads_bit_for_bit_as_torch_reads_it(tmp_path):
  tensors = _every_kind_of_tensor()
  torch.save({"state_dict": tensors, "epoch": 3, "note": "best", "scores": [0.5, 1]},
             tmp_path / "model.pth")
  content = tensor_files.read_torch_zip(tmp_path / "model.pth")
  assert (content["epoch"], content["note"], content["scores"]) == (3, "best", [0.5, 1])
  _assert_same(content["state_dict"], tensors)
  assert all(a.flags.c_contiguous and a.flags.writeable for a in content["state_dict"].values())
  assert content["state_dict"]["bf16"].dtype == jnp.bfloat16


def test_a_module_state_dict_reads_as_torch_reads_it_and_hashes_alike(tmp_path):
  net = torch.nn.Sequential(torch.nn.Conv2d(3, 4, 3), torch.nn.BatchNorm2d(4),
                            torch.nn.Linear(4, 2))
  torch.save(net.state_dict(), tmp_path / "net.pth")
  raw = read_checkpoint(tmp_path / "net.pth")
  _assert_same(raw.tensors, net.state_dict())
  assert (raw.file_format, raw.wrapper, raw.prefix) == ("torch", None, "")
  assert weights_sha256(raw.tensors) == weights_sha256(dict(net.state_dict()))


def test_a_safetensors_file_reads_bit_for_bit_as_torch_reads_it(tmp_path):
  tensors = {name: tensor.contiguous() for name, tensor in _every_kind_of_tensor().items()
             if name not in ("row", "column", "transposed", "bf16_rows")}
  save_file(tensors, tmp_path / "model.safetensors")
  raw = read_checkpoint(tmp_path / "model.safetensors")
  assert raw.file_format == "safetensors"
  for name, tensor in tensors.items():
    expected = tensor_files.as_array(tensor)
    assert raw.tensors[name].dtype == expected.dtype
    assert raw.tensors[name].tobytes() == expected.tobytes()


def test_a_state_dict_passed_in_becomes_arrays_and_converts_back_exactly():
  tensors = _every_kind_of_tensor()
  raw = read_checkpoint(tensors)
  _assert_same(raw.tensors, tensors)
  for name, tensor in tensors.items():
    assert torch.equal(tensor_files.numpy_to_torch(raw.tensors[name]), tensor), name


def test_what_the_reader_does_not_rebuild_is_left_to_torch(tmp_path):
  """A pickled Python object and the legacy (pre-zip) format: torch reads them, with the
  warning a pickle of objects gets, and the tensors still come out as arrays."""
  torch.save({"state_dict": {"w": torch.ones(2)}, "args": argparse.Namespace(lr=0.1)},
             tmp_path / "objects.pth")
  with pytest.raises(tensor_files.NotReadableWithoutTorch, match="Namespace"):
    tensor_files.read_torch_zip(tmp_path / "objects.pth")
  with pytest.warns(UserWarning, match="pickles Python objects"):
    objects = read_checkpoint(tmp_path / "objects.pth")
  np.testing.assert_array_equal(objects.tensors["w"], np.ones(2, np.float32))
  torch.save({"w": torch.ones(3).half()}, tmp_path / "legacy.pth",
             _use_new_zipfile_serialization=False)
  with pytest.raises(tensor_files.NotReadableWithoutTorch):
    tensor_files.read_torch_zip(tmp_path / "legacy.pth")
  legacy = read_checkpoint(tmp_path / "legacy.pth")
  assert legacy.tensors["w"].dtype == np.float16 and legacy.file_format == "torch"
