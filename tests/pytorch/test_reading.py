"""Bad checkpoints fail with one single-line error that says what is wrong."""

from __future__ import annotations

import argparse
import io

import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.torch import save as safetensors_bytes

from jackpot_jax.pytorch import (CheckpointMismatchError, CheckpointNotFoundError,
                                 CheckpointReadError, MasksFileError, apply_masks_file,
                                 export_torch, import_torch)
from torch_reference.torch_models import CifarResNet, randomize_batch_norm

NUM_CLASSES = 10


@pytest.fixture(scope="module")
def resnet20_state():
  torch.manual_seed(0)
  return randomize_batch_norm(CifarResNet(20, NUM_CLASSES)).state_dict()


def _torch_bytes(content, legacy: bool = False) -> bytes:
  buffer = io.BytesIO()
  torch.save(content, buffer, _use_new_zipfile_serialization=not legacy)
  return buffer.getvalue()


def _raises_one_line(error_type, call, *args, **kwargs) -> str:
  with pytest.raises(error_type) as caught:
    call(*args, **kwargs)
  message = str(caught.value)
  assert "\n" not in message and message
  return message


def test_checkpoint_of_another_architecture_lists_keys_in_one_error(resnet20_state):
  message = _raises_one_line(CheckpointMismatchError, import_torch, resnet20_state, "resnet56",
                             NUM_CLASSES)

  assert "missing keys (layer1.3." in message
  assert "0 unexpected keys" in message
  assert "model name and num_classes" in message


def test_torchvision_checkpoint_for_a_cifar_model_reports_every_kind(resnet20_state):
  state = dict(resnet20_state, **{"fc.weight": torch.zeros(NUM_CLASSES, 64)})
  state["conv1.weight"] = torch.zeros(64, 3, 7, 7)

  message = _raises_one_line(CheckpointMismatchError, import_torch, state, "resnet20",
                             NUM_CLASSES)

  assert "1 unexpected keys (fc.weight)" in message
  assert "1 shape mismatches (conv1.weight checkpoint (64, 3, 7, 7) vs model (16, 3, 3, 3))" \
      in message


def test_wrong_num_classes_is_a_shape_mismatch_even_when_not_strict(resnet20_state):
  message = _raises_one_line(CheckpointMismatchError, import_torch, resnet20_state, "resnet20",
                             100, strict=False)

  assert "linear.weight checkpoint (10, 64) vs model (100, 64)" in message
  assert "num_classes=100" in message


def test_non_strict_import_skips_extra_keys_and_keeps_init_for_missing_ones(resnet20_state):
  state = dict(resnet20_state, **{"extra.weight": torch.zeros(3)})
  del state["linear.bias"]

  with pytest.warns(UserWarning, match="linear.bias"):
    imported = import_torch(state, "resnet20", NUM_CLASSES, strict=False)

  assert imported.variables["params"]["linear"]["bias"].shape == (NUM_CLASSES,)
  assert all(source.key != "extra.weight" for source in imported.layout.tensors)


def test_missing_file_is_also_a_file_not_found_error(tmp_path):
  message = _raises_one_line(FileNotFoundError, import_torch, tmp_path / "absent.pth",
                             "resnet20", NUM_CLASSES)
  assert "does not exist" in message
  _raises_one_line(CheckpointNotFoundError, import_torch, tmp_path, "resnet20", NUM_CLASSES)


@pytest.mark.parametrize("container", ["zip", "legacy", "safetensors"])
def test_truncated_checkpoint_says_truncated(resnet20_state, tmp_path, container):
  if container == "safetensors":
    content = safetensors_bytes(resnet20_state)
  else:
    content = _torch_bytes(resnet20_state, legacy=container == "legacy")
  path = tmp_path / "cut.pth"
  path.write_bytes(content[:len(content) // 2])

  message = _raises_one_line(CheckpointReadError, import_torch, path, "resnet20", NUM_CLASSES)

  assert "truncated" in message


@pytest.mark.parametrize("content", [b"", b"epoch,loss\n1,0.5\n", b"\x00" * 64])
def test_file_that_is_not_a_checkpoint(tmp_path, content):
  path = tmp_path / "notes.pth"
  path.write_bytes(content)

  message = _raises_one_line(CheckpointReadError, import_torch, path, "resnet20", NUM_CLASSES)

  assert "empty" in message or "not a PyTorch" in message


def test_checkpoint_without_a_state_dict_names_its_keys(tmp_path):
  path = tmp_path / "optimizer.pth"
  path.write_bytes(_torch_bytes({"optimizer": {"lr": 0.1}, "epoch": 3}))

  message = _raises_one_line(CheckpointReadError, import_torch, path, "resnet20", NUM_CLASSES)

  assert "holds no state_dict" in message and "optimizer, epoch" in message


def test_legacy_pickle_of_python_objects_loads_with_a_warning(resnet20_state, tmp_path):
  path = tmp_path / "with_args.pth.tar"
  path.write_bytes(_torch_bytes({"state_dict": resnet20_state,
                                 "args": argparse.Namespace(arch="resnet20")}))

  with pytest.warns(UserWarning, match="weights_only=False"):
    imported = import_torch(path, "resnet20", NUM_CLASSES)

  assert imported.layout.wrapper == "state_dict"


def test_damaged_or_foreign_masks_file(resnet20_state, tmp_path):
  imported = import_torch(resnet20_state, "resnet20", NUM_CLASSES)
  params = traverse_util.flatten_dict(imported.variables["params"])
  masks = traverse_util.unflatten_dict({path: np.ones(leaf.shape, bool)
                                        for path, leaf in params.items() if path[-1] == "kernel"})
  path = export_torch(imported, imported.variables, masks, tmp_path / "masks.npz",
                      format="masks")
  content = path.read_bytes()
  path.write_bytes(content[:len(content) // 2])
  _raises_one_line(CheckpointReadError, apply_masks_file, path, imported)

  path.write_bytes(content)
  other = import_torch(CifarResNet(20, NUM_CLASSES).state_dict(), "resnet20", NUM_CLASSES)
  message = _raises_one_line(MasksFileError, apply_masks_file, path, other)
  assert "sha256" in message


def test_masks_that_do_not_fit_the_model_are_rejected(resnet20_state, tmp_path):
  imported = import_torch(resnet20_state, "resnet20", NUM_CLASSES)
  masks = {"conv1": {"kernel": np.ones((3, 3, 3, 8), bool)}, "nope": {"kernel": np.ones(3)}}

  message = _raises_one_line(CheckpointMismatchError, export_torch, imported, imported.variables,
                             masks, tmp_path / "x.pth")

  assert "2 problems" in message and "nope/kernel" in message
  assert not (tmp_path / "x.pth").exists()
