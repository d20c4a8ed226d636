"""Exported jackpots load back into PyTorch exactly, in every format, packaging kept."""

from __future__ import annotations

import os
import stat

import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.torch import save_file
from torch.nn.utils import prune

from jackpot_jax.pytorch import (CheckpointLayout, MasksFileError, apply_masks_file,
                                 export_torch, import_torch)
from jackpot_jax.pytorch.layout import to_torch
from jackpot_jax.models.torchvision_vgg import VGG11_LAYOUT
from jackpot_jax.models.vgg_cifar import VGG19_LAYOUT as CIFAR_VGG19_LAYOUT
from torch_reference.torch_models import (AuthorsCifarVGG, CifarResNet, MobileNetV1,
                                              TorchvisionVGG, randomize_batch_norm,
                                              torchvision_resnet)

from conftest import random_kernel_masks

NUM_CLASSES = 5
TOLERANCE = 1e-4


def _torch_masks(imported, masks) -> dict[str, np.ndarray]:
  """Module name -> PyTorch-layout bool mask, via the import layout's transforms."""
  flat = traverse_util.flatten_dict(masks)
  return {source.key.rpartition(".")[0]: to_torch(np.asarray(flat[source.target[1:]]),
                                                  source.transform)
          for source in imported.layout.tensors
          if source.role == "variable" and source.target[1:] in flat}


@pytest.fixture(scope="module", autouse=True)
def flush_denormals():
  # Denormals take slow paths and differ between backends; flush them like XLA does.
  torch.set_flush_denormal(True)
  yield
  torch.set_flush_denormal(False)


@pytest.fixture(scope="module")
def jackpot(tmp_path_factory):
  """A ResNet-18 checkpoint saved DataParallel-style in a {'state_dict': ...} wrapper."""
  torch.manual_seed(0)
  state = randomize_batch_norm(torchvision_resnet(18, NUM_CLASSES)).state_dict()
  path = tmp_path_factory.mktemp("source") / "resnet18.pth.tar"
  torch.save({"state_dict": {f"module.{k}": v for k, v in state.items()}, "epoch": 90}, path)
  imported = import_torch(path, "resnet18", NUM_CLASSES)
  masks = random_kernel_masks(imported.variables["params"])
  images = torch.randn(2, 3, 32, 32)
  logits = imported.model.apply({**imported.variables, "masks": masks},
                                images.permute(0, 2, 3, 1).numpy(), train=False)
  return {"state": state, "path": path, "imported": imported, "masks": masks,
          "images": images, "masked_logits": np.asarray(logits)}


def _shifted(tree, amount: float):
  flat = traverse_util.flatten_dict(tree)
  return traverse_util.unflatten_dict({k: np.asarray(v) + amount for k, v in flat.items()})


def _logits(module: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
  with torch.no_grad():
    return module.eval()(images).numpy()


def test_state_dict_export_keeps_wrapper_and_prefix_and_loads_strictly(jackpot, tmp_path):
  output = export_torch(jackpot["imported"], jackpot["imported"].variables, jackpot["masks"],
                        tmp_path / "jackpot.pth")

  saved = torch.load(output, weights_only=True)
  assert list(saved) == ["state_dict"]
  assert all(key.startswith("module.") for key in saved["state_dict"])
  state = {key.removeprefix("module."): value for key, value in saved["state_dict"].items()}
  module = torchvision_resnet(18, NUM_CLASSES)
  module.load_state_dict(state, strict=True)

  masked = _torch_masks(jackpot["imported"], jackpot["masks"])
  for key, original in jackpot["state"].items():
    layer, _, name = key.rpartition(".")
    if layer in masked and name == "weight":
      mask = torch.from_numpy(masked[layer])
      assert torch.all(state[key][~mask] == 0)
      assert torch.equal(state[key][mask], original[mask])
    else:
      assert torch.equal(state[key], original), key
  np.testing.assert_allclose(_logits(module, jackpot["images"]), jackpot["masked_logits"],
                             rtol=0, atol=TOLERANCE)


def test_clean_keys_writes_a_bare_unprefixed_state_dict(jackpot, tmp_path):
  output = export_torch(jackpot["imported"], jackpot["imported"].variables, jackpot["masks"],
                        tmp_path / "clean.pth", clean_keys=True)

  state = torch.load(output, weights_only=True)
  assert set(state) == set(jackpot["state"])
  torchvision_resnet(18, NUM_CLASSES).load_state_dict(state, strict=True)


@pytest.mark.parametrize("name", ["jackpot.pth", "jackpot.safetensors"])
def test_exported_files_get_the_permissions_of_any_file_the_user_writes(jackpot, tmp_path, name):
  """The mode open() gives under the umask (0644 under 022), not mkstemp's or safetensors'
  0600, whichever format."""
  old_umask = os.umask(0o022)
  try:
    output = export_torch(jackpot["imported"], jackpot["imported"].variables, jackpot["masks"],
                          tmp_path / name, clean_keys=True)
  finally:
    os.umask(old_umask)
  assert stat.S_IMODE(os.stat(output).st_mode) == 0o644


def test_export_takes_bn_statistics_from_variables(jackpot, tmp_path):
  variables = dict(jackpot["imported"].variables)
  variables["batch_stats"] = _shifted(variables["batch_stats"], 1.0)

  state = torch.load(export_torch(jackpot["imported"], variables, None, tmp_path / "bn.pth",
                                  clean_keys=True), weights_only=True)

  torch.testing.assert_close(state["bn1.running_mean"],
                             jackpot["state"]["bn1.running_mean"] + 1, rtol=0, atol=1e-6)
  assert torch.equal(state["conv1.weight"], jackpot["state"]["conv1.weight"])



def test_prune_format_loads_after_prune_identity(jackpot, tmp_path):
  output = export_torch(jackpot["imported"], jackpot["imported"].variables, jackpot["masks"],
                        tmp_path / "pruned.pth", format="prune", clean_keys=True)

  state = torch.load(output, weights_only=True)
  module = torchvision_resnet(18, NUM_CLASSES)
  masked = _torch_masks(jackpot["imported"], jackpot["masks"])
  for name in masked:
    prune.identity(module.get_submodule(name), "weight")
  module.load_state_dict(state, strict=True)

  assert not any(f"{name}.weight" in state for name in masked)
  for name, mask in masked.items():
    assert torch.equal(state[f"{name}.weight_orig"], jackpot["state"][f"{name}.weight"])
    assert torch.equal(state[f"{name}.weight_mask"], torch.from_numpy(mask).float())
  np.testing.assert_allclose(_logits(module, jackpot["images"]), jackpot["masked_logits"],
                             rtol=0, atol=TOLERANCE)


def test_masks_file_round_trips_and_checks_the_weights(jackpot, tmp_path):
  output = export_torch(jackpot["imported"], jackpot["imported"].variables, jackpot["masks"],
                        tmp_path / "masks.npz", format="masks")

  restored = apply_masks_file(output, jackpot["imported"])
  expected = traverse_util.flatten_dict(jackpot["masks"])
  restored = traverse_util.flatten_dict(restored)
  assert restored.keys() == expected.keys()
  assert all(np.array_equal(restored[k], expected[k]) for k in expected)
  assert output.stat().st_size < jackpot["path"].stat().st_size / 16

  other_weights = dict(jackpot["state"], **{"conv1.weight": jackpot["state"]["conv1.weight"] + 1})
  other = import_torch(other_weights, "resnet18", NUM_CLASSES)
  with pytest.raises(MasksFileError, match="sha256"):
    apply_masks_file(output, other)


def test_source_hash_ignores_container_wrapper_and_prefix(jackpot, tmp_path):
  path = tmp_path / "resnet18.safetensors"
  save_file(jackpot["state"], path)

  from_safetensors = import_torch(path, "resnet18", NUM_CLASSES)

  assert from_safetensors.source_sha256 == jackpot["imported"].source_sha256
  assert from_safetensors.layout.wrapper is None and from_safetensors.layout.prefix == ""


def test_layout_survives_json_and_drives_export(jackpot, tmp_path):
  layout = CheckpointLayout.from_json(jackpot["imported"].layout.to_json())
  assert layout == jackpot["imported"].layout

  output = export_torch(layout, jackpot["imported"].variables, jackpot["masks"],
                        tmp_path / "from_layout.safetensors")
  assert output.exists()


def test_failed_export_leaves_the_old_file_and_no_temporary(jackpot, tmp_path, monkeypatch):
  output = tmp_path / "jackpot.pth"
  output.write_bytes(b"previous")

  def crash(obj, temporary):
    temporary.write_bytes(b"partial")
    raise RuntimeError("disk full")

  monkeypatch.setattr(torch, "save", crash)
  with pytest.raises(RuntimeError, match="disk full"):
    export_torch(jackpot["imported"], jackpot["imported"].variables, None, output)

  assert output.read_bytes() == b"previous"
  assert [p.name for p in tmp_path.iterdir()] == ["jackpot.pth"]


def test_authors_pruned_checkpoint_imports_as_a_jackpot_and_exports_its_keys(tmp_path):
  reference = randomize_batch_norm(CifarResNet(20, NUM_CLASSES, classifier="fc"))
  state = reference.state_dict()
  rng = np.random.default_rng(1)
  convs = [key.removesuffix(".weight") for key, value in state.items()
           if key.endswith(".weight") and value.dim() == 4]
  for conv in convs:
    shape = state[f"{conv}.weight"].shape
    state[f"{conv}.mask"] = torch.from_numpy(rng.random(shape).astype(np.float32))
    state[f"{conv}.b_mask"] = (state[f"{conv}.mask"] > 0.3).float()

  imported = import_torch(state, "resnet20", NUM_CLASSES)

  masks = traverse_util.flatten_dict(imported.masks)
  scores = traverse_util.flatten_dict(imported.scores)
  assert masks.keys() == scores.keys() and len(masks) == len(convs)
  assert ("linear", "kernel") in masks  # the authors' 1x1-conv fc maps onto linear
  np.testing.assert_array_equal(masks["linear", "kernel"],
                                state["fc.b_mask"][:, :, 0, 0].numpy().T > 0)
  np.testing.assert_array_equal(scores["layer1_0", "conv1", "kernel"],
                                state["layer1.0.conv1.mask"].numpy().transpose(2, 3, 1, 0))

  exported = torch.load(export_torch(imported, imported.variables, imported.masks,
                                     tmp_path / "authors.pth"), weights_only=True)
  assert list(exported) == list(state)
  assert torch.equal(exported["fc.b_mask"], state["fc.b_mask"])
  assert torch.equal(exported["fc.mask"], state["fc.b_mask"])
  kept = state["layer1.0.conv1.b_mask"].bool()
  assert torch.all(exported["layer1.0.conv1.weight"][~kept] == 0)
  assert torch.equal(exported["layer1.0.conv1.weight"][kept], state["layer1.0.conv1.weight"][kept])

  with_scores = torch.load(export_torch(imported, imported.variables, imported.masks,
                                        tmp_path / "scores.pth", scores=imported.scores),
                           weights_only=True)
  assert torch.equal(with_scores["layer1.0.conv1.mask"], state["layer1.0.conv1.mask"])


# One layout per kernel transform besides ResNet-18's: torchvision VGG (conv bias, the
# NCHW-flattened classifier.0), the authors' CIFAR VGG (1x1-conv classifier), MobileNet-V1
# (depthwise convs).
MASKED_LAYOUTS = {
    "vgg11_bn": (lambda: TorchvisionVGG(VGG11_LAYOUT, NUM_CLASSES, 16), {"hidden_features": 16}),
    "vgg19": (lambda: AuthorsCifarVGG(CIFAR_VGG19_LAYOUT, NUM_CLASSES), {}),
    "mobilenet_v1": (lambda: MobileNetV1(NUM_CLASSES), {}),
}


@pytest.mark.parametrize("model_name", sorted(MASKED_LAYOUTS))
def test_masked_export_matches_masked_flax_model(model_name, tmp_path):
  build_reference, model_kwargs = MASKED_LAYOUTS[model_name]
  torch.manual_seed(0)
  reference = randomize_batch_norm(build_reference())
  imported = import_torch(reference.state_dict(), model_name, NUM_CLASSES,
                          model_kwargs=model_kwargs)
  masks = random_kernel_masks(imported.variables["params"])
  images = torch.randn(2, 3, 32, 32)
  expected = imported.model.apply({**imported.variables, "masks": masks},
                                  images.permute(0, 2, 3, 1).numpy(), train=False)

  output = export_torch(imported, imported.variables, masks, tmp_path / "jackpot.pth")
  reference.load_state_dict(torch.load(output, weights_only=True), strict=True)

  np.testing.assert_allclose(_logits(reference, images), np.asarray(expected), rtol=0,
                             atol=TOLERANCE)
