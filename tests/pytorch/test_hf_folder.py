"""Hugging Face model folders (save_pretrained) import as checkpoints: config.json picks
the model, the weights (one file, shards, or pytorch_model.bin) give the logits of
transformers' own model, and a search made from a folder exports back into it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import jax
import numpy as np
import pytest
import torch
from safetensors.torch import load_file as load_safetensors

from jackpot_jax.run import spec as spec_lib, job, workdir_export
from jackpot_jax.pytorch import (CheckpointMismatchError, CheckpointNotFoundError, export_torch,
                                 import_torch)
from jackpot_jax.pytorch.hf_folder import resolve_model

# transformers would import TensorFlow (installed for TFDS) for its TF models: unused here.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
from transformers import (DeiTConfig, DeiTForImageClassification, ViTConfig,  # noqa: E402
                          ViTForImageClassification)

from conftest import TINY_CHECKPOINT, TINY_MODEL, random_kernel_masks, tiny_config  # noqa: E402

NUM_LABELS = 7
IMAGE = 16
TOLERANCE = 1e-4
# config.json fields -> the builder arguments they resolve to.
SIZES = {"hidden_size": 32, "num_hidden_layers": 2, "num_attention_heads": 2,
         "intermediate_size": 64, "patch_size": 8, "layer_norm_eps": 1e-6}
KWARGS = {"hidden_size": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64, "patch_size": 8,
          "layer_norm_eps": 1e-6, "qkv_bias": True, "gelu": "exact"}
FAMILIES = {"vit": (ViTConfig, ViTForImageClassification),
            "deit": (DeiTConfig, DeiTForImageClassification)}


def _hf_model(family: str, **overrides) -> torch.nn.Module:
  config_class, model_class = FAMILIES[family]
  config = config_class(**{**SIZES, "image_size": IMAGE, "num_labels": NUM_LABELS,
                           "initializer_range": 0.2, **overrides})
  torch.manual_seed(0)
  return model_class(config).eval()


def _save(model: torch.nn.Module, folder: Path, **kwargs) -> Path:
  model.save_pretrained(folder, **kwargs)
  return folder


def _logits(imported, images: torch.Tensor, masks=None) -> np.ndarray:
  variables = imported.variables if masks is None else {**imported.variables, "masks": masks}
  apply = jax.jit(imported.model.apply, static_argnames="train")
  return np.asarray(apply(variables, images.permute(0, 2, 3, 1).numpy(), train=False))


def _torch_logits(model: torch.nn.Module, images: torch.Tensor) -> np.ndarray:
  with torch.no_grad():
    return model(images).logits.numpy()


def _config_only(folder: Path, **fields) -> Path:
  """A folder with only a config.json: enough for what resolves before the weights load."""
  folder.mkdir()
  (folder / "config.json").write_text(json.dumps(fields))
  return folder


# How each folder is saved: one safetensors file, shards with an index, a torch pickle.
SAVED = {"vit_safetensors": ("vit", {}),
         "deit_sharded": ("deit", {"max_shard_size": "20KB"}),
         "vit_pytorch_bin": ("vit", {"safe_serialization": False})}


@pytest.mark.parametrize("saved", sorted(SAVED))
def test_folder_resolves_from_config_json_and_imports_with_transformers_logits(saved, tmp_path):
  family, save_kwargs = SAVED[saved]
  reference = _hf_model(family)
  folder = _save(reference, tmp_path / saved, **save_kwargs)
  if saved == "deit_sharded":
    assert (folder / "model.safetensors.index.json").exists()

  resolved = resolve_model(folder, "auto", 0, {})
  imported = import_torch(folder, resolved.name, resolved.num_classes,
                          model_kwargs=resolved.kwargs)

  assert resolved.name == ("hf_deit" if family == "deit" else "vit")
  assert resolved.kwargs == {**KWARGS, "distillation_token": family == "deit"}
  assert resolved.num_classes == NUM_LABELS
  assert imported.input_shape == (IMAGE, IMAGE, 3)
  images = torch.randn(2, 3, IMAGE, IMAGE)
  np.testing.assert_allclose(_logits(imported, images), _torch_logits(reference, images),
                             rtol=0, atol=TOLERANCE)


def test_a_folder_with_a_registered_models_sizes_resolves_to_its_name(tmp_path):
  folder = _config_only(tmp_path / "base", model_type="vit", hidden_size=768,
                        num_hidden_layers=12, num_attention_heads=12, intermediate_size=3072,
                        patch_size=16, layer_norm_eps=1e-12, id2label={"0": "cat", "1": "dog"})

  assert resolve_model(folder, "auto", 0, {}).name == "vit_b16"
  assert resolve_model(folder, "vit", 2, {}).name == "vit"  # a name that builds it agrees


def test_run_spec_records_the_folders_model_name_sizes_and_labels(tiny_job, tmp_path):
  config = tiny_config(tiny_job)
  config.model.checkpoint = str(_config_only(
      tmp_path / "deit", model_type="deit", **SIZES, id2label={str(i): str(i) for i in range(10)}))
  config.model.name, config.model.num_classes = "auto", 0
  config.model.kwargs.pos_antialias = True  # a builder argument the folder leaves alone

  spec = spec_lib.resolve(config)

  assert spec.config.model.name == "hf_deit" and spec.model.name == "hf_deit"
  assert spec.config.model.num_classes == 10
  assert dict(spec.config.model.kwargs) == {**KWARGS, "distillation_token": True,
                                            "pos_antialias": True}
  assert config.model.name == "auto", "the caller's config is left as it was"


@pytest.mark.parametrize("name,num_classes,kwargs,says", [
    ("resnet20", 0, {}, "model.name='resnet20' but checkpoint folder"),
    ("vit_b16", 0, {}, "that 'vit' builds; set --config.model.name=auto"),
    ("auto", 10, {}, f"model.num_classes=10 but checkpoint folder {{}} has {NUM_LABELS} labels"),
    ("auto", 0, {"hidden_size": 64}, "model.kwargs disagree with checkpoint folder {}: "
                                     "hidden_size=64 (config.json: 32)"),
])
def test_a_config_that_disagrees_with_the_folder_is_a_one_line_error(name, num_classes, kwargs,
                                                                      says, tmp_path):
  folder = _config_only(tmp_path / "vit", model_type="vit", **SIZES,
                        id2label={str(i): str(i) for i in range(NUM_LABELS)})

  with pytest.raises(ValueError) as caught:
    resolve_model(folder, name, num_classes, kwargs)

  assert says.format(folder) in str(caught.value) and "\n" not in str(caught.value)


@pytest.mark.parametrize("fields,says", [
    (None, "checkpoint folder {} has no config.json"),
    ({"model_type": "bert"}, "config.json's model_type 'bert' is not supported; supported: "
                             "deit, vit"),
    ({"model_type": "deit", "architectures": ["DeiTForImageClassificationWithTeacher"]},
     "only DeiTForImageClassification (one classifier on the class token) imports"),
    ({"model_type": "vit", "hidden_act": "relu"}, "hidden_act 'relu' is not supported"),
    ({"model_type": "vit", "id2label": {"0": "a"}, "num_hidden_layers": 0},
     "num_hidden_layers=0 is not a positive int"),
])
def test_a_bad_folder_is_a_one_line_error_naming_it(fields, says, tmp_path):
  folder = tmp_path / "folder"
  if fields is None:
    folder.mkdir()
  else:
    _config_only(folder, **fields)

  with pytest.raises(ValueError) as caught:
    resolve_model(folder, "auto", 0, {})

  assert says.format(folder) in str(caught.value) and "\n" not in str(caught.value)


def test_a_folder_without_weights_or_with_a_missing_shard_says_so(tmp_path):
  folder = _save(_hf_model("vit"), tmp_path / "sharded", max_shard_size="20KB")
  shard = sorted(folder.glob("model-*.safetensors"))[0]
  shard.unlink()

  with pytest.raises(CheckpointNotFoundError, match=f"lacks 1 of the shards .*{shard.name}"):
    import_torch(folder, "vit", NUM_LABELS, model_kwargs=KWARGS)
  for path in folder.glob("model*"):
    path.unlink()
  with pytest.raises(CheckpointNotFoundError, match="holds no weights: none of model.safetensors"):
    import_torch(folder, "vit", NUM_LABELS, model_kwargs=KWARGS)


def test_a_pth_with_another_models_keys_names_that_model(tmp_path):
  checkpoint = tmp_path / "vit.pth"
  torch.save(_hf_model("vit").state_dict(), checkpoint)

  with pytest.raises(CheckpointMismatchError) as caught:
    import_torch(checkpoint, "resnet20", NUM_LABELS)

  message = str(caught.value)
  assert f"checkpoint {checkpoint} does not fit model 'resnet20': its keys are those of " \
         in message
  assert " vit, " in message and "(Hugging Face layout) with another number of blocks" \
      in message


def test_a_cifar_resnet_checkpoint_named_as_a_vit_says_it_is_a_resnet(tiny_job):
  with pytest.raises(CheckpointMismatchError,
                     match=rf"does not fit model 'vit_b16': its keys are those of {TINY_MODEL} "
                           r"\(PyTorch layout\); set the model name"):
    import_torch(tiny_job / TINY_CHECKPOINT, "vit_b16", 10)


@pytest.mark.parametrize("family", sorted(FAMILIES))
@pytest.mark.parametrize("suffix", [".pth", ".safetensors"])
def test_export_of_a_folder_import_loads_strictly_into_transformers(family, suffix, tmp_path):
  folder = _save(_hf_model(family), tmp_path / family)
  resolved = resolve_model(folder, "auto", 0, {})
  imported = import_torch(folder, resolved.name, NUM_LABELS, model_kwargs=resolved.kwargs)
  masks = random_kernel_masks(imported.variables["params"])
  images = torch.randn(2, 3, IMAGE, IMAGE)

  output = export_torch(imported, imported.variables, masks, tmp_path / f"jackpot{suffix}")

  reloaded = _hf_model(family)
  reloaded.load_state_dict(_load(output), strict=True)
  np.testing.assert_allclose(_torch_logits(reloaded, images), _logits(imported, images, masks),
                             rtol=0, atol=TOLERANCE)


def _load(path: Path) -> dict[str, torch.Tensor]:
  if path.suffix == ".safetensors":
    return load_safetensors(path)
  return torch.load(path, weights_only=True)


def test_a_search_from_a_folder_reports_the_resolved_model_exports_and_applies_masks(tiny_job, tmp_path):
  # tiny_job's 8x8 grayscale images, 10 classes: four 4x4 patches, one block.
  sizes = {"num_channels": 1, "image_size": 8, "patch_size": 4, "num_hidden_layers": 1,
           "num_labels": 10}
  folder = _save(_hf_model("vit", **sizes), tmp_path / "vit")
  config = tiny_config(tiny_job)
  config.model.checkpoint, config.model.name, config.model.num_classes = str(folder), "auto", 0
  config.search.hidden_dense = "plan"
  config.search.num_epochs, config.eval.every_epochs = 0.25, 0.0

  report = job.search_and_evaluate(config, tmp_path / "run")

  assert report["model"] == "vit" and report["num_classes"] == 10
  assert report["model_kwargs"]["depth"] == 1 and report["model_kwargs"]["patch_size"] == 4
  assert report["checkpoint_input_shape"] == [8, 8, 1]
  for suffix in (".pth", ".safetensors"):
    output = workdir_export.export_workdir(tmp_path / "run", tmp_path / f"jackpot{suffix}")
    reloaded = _hf_model("vit", **sizes)
    reloaded.load_state_dict(_load(output), strict=True)
    query = reloaded.vit.encoder.layer[0].attention.attention.query.weight
    assert 0 < int((query == 0).sum()) < query.numel()
  masks = workdir_export.export_workdir(tmp_path / "run", tmp_path / "masks.npz", "masks")
  applied = workdir_export.apply_masks(config, masks, tmp_path / "applied.pth")
  assert torch.equal(_load(applied)["vit.encoder.layer.0.attention.attention.query.weight"],
                     _load(tmp_path / "jackpot.pth")[
                         "vit.encoder.layer.0.attention.attention.query.weight"])
