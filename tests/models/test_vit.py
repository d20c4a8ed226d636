"""ViTs import from Hugging Face's and timm's layouts with the same logits, and export back."""

from __future__ import annotations

import functools
import json
import os

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
import torch.nn.functional as F
from flax import traverse_util
from torch.nn.utils import prune
from torch.sparse import to_sparse_semi_structured
# PyTorch's own CUTLASS 2:4 packing, on the CPU too (a private module: no public CPU path).
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass, sparse_semi_structured_to_dense_cutlass)

from jackpot_jax.search import masking
from jackpot_jax.models import build_model
from jackpot_jax.models.vit import resize_grid
from jackpot_jax.pytorch import (CheckpointLayout, CheckpointMismatchError, apply_masks_file,
                                 export_torch, import_torch)
from jackpot_jax.pytorch.layout import by_key, to_torch
from torch_reference.torch_vit import TimmVisionTransformer, randomize_layer_norms

# transformers would import TensorFlow (installed for TFDS) for its TF models: 7 s unused.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
from transformers import ViTConfig, ViTForImageClassification  # noqa: E402

from conftest import random_kernel_masks  # noqa: E402

NUM_CLASSES = 7
TOLERANCE = 1e-4
IMAGE = 32
# A tiny ViT: 4x4 patches of 8 pixels, two blocks of two heads.
SMALL = {"patch_size": 8, "hidden_size": 32, "depth": 2, "num_heads": 2, "mlp_dim": 64}


@pytest.fixture(scope="module", autouse=True)
def flush_denormals():
  # Denormals take slow paths and differ between backends; flush them like XLA does.
  torch.set_flush_denormal(True)
  yield
  torch.set_flush_denormal(False)


def _hf_model(sizes: dict = SMALL) -> ViTForImageClassification:
  config = ViTConfig(hidden_size=sizes["hidden_size"], num_hidden_layers=sizes["depth"],
                     num_attention_heads=sizes["num_heads"], intermediate_size=sizes["mlp_dim"],
                     image_size=IMAGE, patch_size=sizes["patch_size"], num_labels=NUM_CLASSES,
                     initializer_range=0.2)
  torch.manual_seed(0)
  return randomize_layer_norms(ViTForImageClassification(config))


def _timm_model(pool: str = "token", depth: int | None = None, dynamic_img_size: bool = False,
                sizes: dict = SMALL) -> TimmVisionTransformer:
  torch.manual_seed(1)
  return randomize_layer_norms(TimmVisionTransformer(
      IMAGE, sizes["patch_size"], 3, NUM_CLASSES, sizes["hidden_size"],
      sizes["depth"] if depth is None else depth, sizes["num_heads"], sizes["mlp_dim"],
      global_pool=pool, dynamic_img_size=dynamic_img_size))


def _timm_kwargs(pool: str = "token", **extra) -> dict:
  return {**SMALL, "pool": "cls" if pool == "token" else "mean", **extra}


def _flax_logits(imported, images: torch.Tensor, masks=None) -> np.ndarray:
  variables = imported.variables if masks is None else {**imported.variables, "masks": masks}
  # Jitted: one compile per shape costs less than running the layers op by op.
  apply = jax.jit(imported.model.apply, static_argnames="train")
  return np.asarray(apply(variables, images.permute(0, 2, 3, 1).numpy(), train=False))


def _torch_logits(module: torch.nn.Module, images: torch.Tensor, **kwargs) -> np.ndarray:
  with torch.no_grad():
    output = module.eval()(images, **kwargs)
  return getattr(output, "logits", output).numpy()


def _torch_masks(imported, masks) -> dict[str, np.ndarray]:
  """Checkpoint weight key -> PyTorch-layout bool mask, a fused qkv's parts stacked."""
  flat = traverse_util.flatten_dict(masks)
  torch_masks = {}
  for key, parts in by_key(imported.layout.tensors).items():
    if parts[0].role == "variable" and parts[0].target[1:] in flat:
      torch_masks[key] = np.concatenate([to_torch(np.asarray(flat[p.target[1:]]), p.transform)
                                         for p in parts])
  return torch_masks


def _assert_exactly_masked(exported: dict, original: dict, torch_masks: dict) -> None:
  """Masked weights are W * M (zeros exactly where pruned), everything else untouched."""
  assert list(exported) == list(original)
  for key, value in original.items():
    expected = value
    if key in torch_masks:
      expected = torch.where(torch.from_numpy(torch_masks[key]), value, torch.zeros(()))
    assert torch.equal(exported[key], expected), key


def test_hf_vit_imports_with_the_same_logits_and_the_checkpoints_image_size():
  reference = _hf_model()
  images = torch.randn(2, 3, IMAGE, IMAGE)

  # vit_b16's default input is 224x224; the checkpoint's 17 position embeddings (a 4x4
  # grid and the class token) say 32x32.
  imported = import_torch(reference.state_dict(), "vit_b16", NUM_CLASSES, model_kwargs=SMALL)

  assert imported.variables["params"]["vit"]["embeddings"]["position_embeddings"].shape == (
      1, 17, 32)
  np.testing.assert_allclose(_flax_logits(imported, images), _torch_logits(reference, images),
                             rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("height,width", [(48, 48), (24, 24), (32, 48)])
def test_hf_vit_on_another_image_size_matches_interpolate_pos_encoding(height, width):
  reference = _hf_model()
  images = torch.randn(2, 3, height, width)
  imported = import_torch(reference.state_dict(), "vit_b16", NUM_CLASSES, model_kwargs=SMALL)

  expected = _torch_logits(reference, images, interpolate_pos_encoding=True)

  np.testing.assert_allclose(_flax_logits(imported, images), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("antialias", [False, True])
@pytest.mark.parametrize("size", [(7, 7), (2, 3), (4, 4)])
def test_position_grid_resize_is_pytorch_bicubic_interpolate(size, antialias):
  grid = torch.randn(1, 5, 4, 4)
  expected = F.interpolate(grid, size=size, mode="bicubic", align_corners=False,
                           antialias=antialias)[0].permute(1, 2, 0).numpy()

  resized = resize_grid(grid[0].permute(1, 2, 0).numpy(), size, antialias)

  np.testing.assert_allclose(np.asarray(resized), expected, rtol=0, atol=1e-5)


@pytest.mark.parametrize("pool", ["token", "avg"])
def test_timm_vit_imports_with_the_same_logits(pool):
  reference = _timm_model(pool, dynamic_img_size=True)
  imported = import_torch(reference.state_dict(), "deit_b16", NUM_CLASSES,
                          model_kwargs=_timm_kwargs(pool, pos_antialias=True))

  for height, width in [(IMAGE, IMAGE), (48, 40)]:  # the second resizes pos_embed as timm does
    images = torch.randn(2, 3, height, width)
    np.testing.assert_allclose(_flax_logits(imported, images), _torch_logits(reference, images),
                               rtol=0, atol=TOLERANCE)


def test_timm_qkv_splits_by_rows_and_the_layout_keeps_the_rows_through_json():
  state = _timm_model().state_dict()
  dim = SMALL["hidden_size"]

  imported = import_torch(state, "deit_b16", NUM_CLASSES, model_kwargs=_timm_kwargs())

  attention = imported.variables["params"]["vit"]["encoder"]["layer_1"]["attention"]["attention"]
  for index, name in enumerate(("query", "key", "value")):
    rows = slice(index * dim, (index + 1) * dim)
    np.testing.assert_array_equal(attention[name]["kernel"],
                                  state["blocks.1.attn.qkv.weight"][rows].numpy().T)
    np.testing.assert_array_equal(attention[name]["bias"],
                                  state["blocks.1.attn.qkv.bias"][rows].numpy())
  parts = by_key(imported.layout.tensors)["blocks.1.attn.qkv.weight"]
  assert [part.rows for part in parts] == [(0, dim), (dim, 2 * dim), (2 * dim, 3 * dim)]
  assert CheckpointLayout.from_json(imported.layout.to_json()) == imported.layout
  assert json.loads(imported.layout.to_json())["tensors"][0]["key"] == "cls_token"


@pytest.fixture(scope="module", params=["hf", "timm"])
def jackpot(request):
  """An imported tiny ViT of either layout with random masks on every kernel."""
  if request.param == "hf":
    build, model_name, kwargs = _hf_model, "vit_b16", SMALL
  else:
    build, model_name, kwargs = lambda: _timm_model("avg"), "deit_b16", _timm_kwargs("avg")
  # Copies: a state_dict's tensors are the module's parameters.
  state = {key: value.clone() for key, value in build().state_dict().items()}
  imported = import_torch(state, model_name, NUM_CLASSES, model_kwargs=kwargs)
  masks = random_kernel_masks(imported.variables["params"])
  images = torch.randn(2, 3, IMAGE, IMAGE)
  return {"build": build, "state": state, "imported": imported, "masks": masks,
          "images": images, "masked_logits": _flax_logits(imported, images, masks)}


def test_state_dict_export_loads_strictly_with_weights_exactly_w_times_m(jackpot, tmp_path):
  output = export_torch(jackpot["imported"], jackpot["imported"].variables, jackpot["masks"],
                        tmp_path / "jackpot.pth")

  exported = torch.load(output, weights_only=True)
  _assert_exactly_masked(exported, jackpot["state"],
                         _torch_masks(jackpot["imported"], jackpot["masks"]))
  module = jackpot["build"]()
  module.load_state_dict(exported, strict=True)
  np.testing.assert_allclose(_torch_logits(module, jackpot["images"]),
                             jackpot["masked_logits"], rtol=0, atol=TOLERANCE)


def test_prune_format_loads_after_prune_identity_with_stacked_qkv_masks(jackpot, tmp_path):
  output = export_torch(jackpot["imported"], jackpot["imported"].variables, jackpot["masks"],
                        tmp_path / "pruned.pth", format="prune")

  exported = torch.load(output, weights_only=True)
  torch_masks = _torch_masks(jackpot["imported"], jackpot["masks"])
  if "blocks.0.attn.qkv.weight" in torch_masks:
    assert exported["blocks.0.attn.qkv.weight_mask"].shape == (3 * SMALL["hidden_size"],
                                                               SMALL["hidden_size"])
  module = jackpot["build"]()
  for key in torch_masks:
    prune.identity(module.get_submodule(key.removesuffix(".weight")), "weight")
  module.load_state_dict(exported, strict=True)
  for key, mask in torch_masks.items():
    stem = key.removesuffix(".weight")
    assert torch.equal(exported[f"{stem}.weight_orig"], jackpot["state"][key])
    assert torch.equal(exported[f"{stem}.weight_mask"], torch.from_numpy(mask).float())
  np.testing.assert_allclose(_torch_logits(module, jackpot["images"]), jackpot["masked_logits"],
                             rtol=0, atol=TOLERANCE)


def test_masks_file_round_trips_with_one_layer_per_checkpoint_weight(jackpot, tmp_path):
  output = export_torch(jackpot["imported"], jackpot["imported"].variables, jackpot["masks"],
                        tmp_path / "masks.npz", format="masks")

  restored = traverse_util.flatten_dict(apply_masks_file(output, jackpot["imported"]))
  expected = traverse_util.flatten_dict(jackpot["masks"])
  assert restored.keys() == expected.keys()
  assert all(np.array_equal(restored[k], expected[k]) for k in expected)
  with np.load(output) as archive:
    layers = json.loads(str(archive["metadata"]))["layers"]
  assert [layer["name"] for layer in layers] == [
      key.removesuffix(".weight") for key in _torch_masks(jackpot["imported"], jackpot["masks"])]


def test_a_qkv_part_without_a_mask_exports_as_all_ones_rows(tmp_path):
  state = _timm_model().state_dict()
  imported = import_torch(state, "deit_b16", NUM_CLASSES, model_kwargs=_timm_kwargs())
  dim = SMALL["hidden_size"]
  query_mask = np.random.default_rng(0).random((dim, dim)) < 0.5
  masks = {"vit": {"encoder": {"layer_0": {"attention": {"attention": {
      "query": {"kernel": query_mask}}}}}}}

  exported = torch.load(export_torch(imported, imported.variables, masks,
                                     tmp_path / "pruned.pth", format="prune"), weights_only=True)

  mask = exported["blocks.0.attn.qkv.weight_mask"]
  assert torch.equal(mask[:dim], torch.from_numpy(query_mask.T).float())
  assert torch.all(mask[dim:] == 1)
  assert "blocks.1.attn.qkv.weight" in exported and "blocks.1.attn.qkv.weight_mask" not in exported


# Wide enough that every encoder Linear weight meets float16 to_sparse_semi_structured's
# shape rule (rows a multiple of 32, columns of 64).
SEMI_STRUCTURED = {**SMALL, "hidden_size": 64, "mlp_dim": 128, "depth": 1}


def _nm_kernel_masks(params, pattern: masking.NMPattern):
  """The N:M magnitude mask of every encoder kernel (patch embedding and head stay dense)."""
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({
      path: np.asarray(masking.nm_mask(jnp.abs(leaf), pattern))
      for path, leaf in flat.items() if path[-1] == "kernel" and "encoder" in path})


@pytest.mark.parametrize("layout", ["hf", "timm"])
def test_a_2_4_jackpot_exports_linear_weights_that_pytorch_2_4_kernels_take(layout, tmp_path):
  """Every masked Linear weight survives PyTorch's own CUTLASS 2:4 compression round trip
  (which silently corrupts a group of four holding more than two non-zeros), the fused
  timm qkv included; where CUDA is present, to_sparse_semi_structured converts every one
  and the sparse layer computes what the dense masked layer does."""
  if layout == "hf":
    state = _hf_model(SEMI_STRUCTURED).state_dict()
    imported = import_torch(state, "vit_b16", NUM_CLASSES, model_kwargs=SEMI_STRUCTURED)
  else:
    state = _timm_model(sizes=SEMI_STRUCTURED).state_dict()
    imported = import_torch(state, "deit_b16", NUM_CLASSES,
                            model_kwargs=_timm_kwargs(**SEMI_STRUCTURED))
  masks = _nm_kernel_masks(imported.variables["params"], masking.NMPattern(2, 4))

  exported = torch.load(export_torch(imported, imported.variables, masks,
                                     tmp_path / "jackpot.pth"), weights_only=True)

  masked_keys = list(_torch_masks(imported, masks))
  assert len(masked_keys) == (6 if layout == "hf" else 4) * SEMI_STRUCTURED["depth"]
  for key in masked_keys:
    weight = exported[key].half()
    assert weight.shape[0] % 32 == 0 and weight.shape[1] % 64 == 0, key
    compressed, meta = sparse_semi_structured_from_dense_cutlass(weight)
    assert torch.equal(sparse_semi_structured_to_dense_cutlass(compressed, meta), weight), key
    if torch.cuda.is_available():
      weight = weight.cuda()
      inputs = torch.randn(64, weight.shape[1], dtype=torch.half, device="cuda")
      torch.testing.assert_close(F.linear(inputs, to_sparse_semi_structured(weight)),
                                 F.linear(inputs, weight), rtol=1e-2, atol=1e-2)


def test_authors_masks_beside_a_fused_qkv_import_per_part_and_export_stacked(tmp_path):
  state = _timm_model().state_dict()
  rng = np.random.default_rng(2)
  shape = state["blocks.0.attn.qkv.weight"].shape
  state["blocks.0.attn.qkv.mask"] = torch.from_numpy(rng.random(shape).astype(np.float32))
  state["blocks.0.attn.qkv.b_mask"] = (state["blocks.0.attn.qkv.mask"] > 0.3).float()

  imported = import_torch(state, "deit_b16", NUM_CLASSES, model_kwargs=_timm_kwargs())

  dim = SMALL["hidden_size"]
  key_mask = imported.masks["vit"]["encoder"]["layer_0"]["attention"]["attention"]["key"]
  np.testing.assert_array_equal(key_mask["kernel"],
                                state["blocks.0.attn.qkv.b_mask"][dim:2 * dim].numpy().T > 0)
  exported = torch.load(export_torch(imported, imported.variables, imported.masks,
                                     tmp_path / "authors.pth", scores=imported.scores),
                        weights_only=True)
  assert list(exported) == list(state)
  assert torch.equal(exported["blocks.0.attn.qkv.mask"], state["blocks.0.attn.qkv.mask"])
  assert torch.equal(exported["blocks.0.attn.qkv.b_mask"], state["blocks.0.attn.qkv.b_mask"])


def _hf_state() -> dict:
  return _hf_model().state_dict()


def _timm_state(pool: str = "token", depth: int = SMALL["depth"]) -> dict:
  return _timm_model(pool, depth).state_dict()


def _timm_state_with_qkv(rows: int, columns: int) -> dict:
  return {**_timm_state(), "blocks.0.attn.qkv.weight": torch.zeros(rows, columns)}


# What is wrong: (source state_dict, model name, model kwargs, num_classes, what the
# message must say).
MISMATCHES = {
    "hf_num_classes": (_hf_state, "vit_b16", SMALL, 5,
                       "classifier.weight checkpoint (7, 32) vs model (5, 32)"),
    "timm_num_classes": (_timm_state, "deit_b16", _timm_kwargs(), 5,
                         "head.weight checkpoint (7, 32) vs model (5, 32)"),
    "timm_missing_block": (_timm_state, "deit_b16", _timm_kwargs(depth=3), NUM_CLASSES,
                           "12 missing keys (blocks.2.attn.qkv.bias"),
    "timm_extra_block": (lambda: _timm_state(depth=3), "deit_b16", _timm_kwargs(), NUM_CLASSES,
                         "12 unexpected keys (blocks.2.norm1.weight"),
    "timm_avg_head_into_cls_model": (lambda: _timm_state("avg"), "deit_b16", _timm_kwargs(),
                                     NUM_CLASSES, "2 unexpected keys (fc_norm.weight"),
    "timm_qkv_of_another_width": (
        lambda: _timm_state_with_qkv(96, 16), "deit_b16", _timm_kwargs(), NUM_CLASSES,
        "blocks.0.attn.qkv.weight[0:32] checkpoint (32, 16) vs model (32, 32)"),
    "timm_qkv_not_three_blocks": (
        lambda: _timm_state_with_qkv(95, 32), "deit_b16", _timm_kwargs(), NUM_CLASSES,
        "blocks.0.attn.qkv.weight checkpoint (95, 32) does not split into 3 equal row blocks"),
}


@pytest.mark.parametrize("case", sorted(MISMATCHES))
def test_strict_mismatch_is_one_line_in_the_checkpoints_names(case):
  make_state, model_name, kwargs, num_classes, says = MISMATCHES[case]

  with pytest.raises(CheckpointMismatchError) as error:
    import_torch(make_state(), model_name, num_classes, model_kwargs=kwargs)

  message = str(error.value)
  assert "\n" not in message and says in message
  if case.startswith("timm"):
    assert "vit." not in message  # our (HF's) names stay out of a timm checkpoint's errors


def test_registered_tiny_vit_runs_on_28_and_32_pixel_grayscale_images():
  model = build_model("vit_tiny_p4", 10, pool="mean")
  # Shapes only, filled with numpy's normals: compiling random initialisation for 38
  # layers would cost XLA ten seconds.
  shapes = jax.eval_shape(functools.partial(model.init, train=False), jax.random.key(0),
                          jax.ShapeDtypeStruct((1, 28, 28, 1), np.float32))
  rng = np.random.default_rng(0)
  variables = jax.tree_util.tree_map(
      lambda leaf: rng.normal(0, 0.1, leaf.shape).astype(np.float32), shapes)

  apply = jax.jit(model.apply, static_argnames="train")
  for side in (28, 32):
    logits = apply(variables, np.ones((2, side, side, 1), np.float32), train=False)
    assert logits.shape == (2, 10) and np.all(np.isfinite(logits))
  positions = variables["params"]["vit"]["embeddings"]["position_embeddings"]
  assert positions.shape == (1, 50, 64)
