"""N:M masks: exactly N of every M consecutive input channels at every kernel position (NVIDIA
ASP's grouping), searched through the same straight-through step, reported and exported in
the layout sparse kernels read."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import torch
from flax import traverse_util

from jackpot_jax.run import spec as spec_lib, job, workdir_export
from jackpot_jax.search import masking, sparsity
from jackpot_jax.run.setup import magnitude_masks

from conftest import setup_of, tiny_config


def _torch_weight(flax_kernel: np.ndarray) -> np.ndarray:
  """A Flax kernel ((kh, kw,) in, out) as PyTorch stores the weight: (out, in(, kh, kw))."""
  kernel = np.asarray(flax_kernel)
  return kernel.transpose(kernel.ndim - 1, kernel.ndim - 2, *range(kernel.ndim - 2))


def _asp_groups(flax_kernel: np.ndarray, m: int) -> np.ndarray:
  """The reference grouping, written with numpy from NVIDIA ASP's rule on PyTorch's layout:
  a conv weight [K, C, R, S] (1-D: [K, C, R]) permuted channels-last to [R, S, K, C], a
  linear [out, in] as it is, then cut into runs of m along the last (input-channel) axis."""
  weight = _torch_weight(flax_kernel)
  channels_last = weight.transpose(*range(2, weight.ndim), 0, 1)
  return channels_last.reshape(-1, m)


def _flattened_row_groups(torch_weight: np.ndarray, m: int) -> np.ndarray:
  """Groups of m along PyTorch's flattened [out, in*kh*kw] rows: what the masks used before
  they followed ASP, which cross kernel positions and are not what sparse kernels read."""
  return torch_weight.reshape(torch_weight.shape[0], -1, m)


def _top_n_of_groups(groups: np.ndarray, n: int) -> np.ndarray:
  largest = np.argsort(-groups, axis=-1, kind="stable")[..., :n]
  expected = np.zeros(groups.shape, bool)
  np.put_along_axis(expected, largest, True, axis=-1)
  return expected


@pytest.mark.parametrize("shape", [(3, 3, 8, 5), (16, 6), (1, 1, 16, 4), (3, 8, 5)])
@pytest.mark.parametrize("n,m", [(2, 4), (1, 4), (4, 8)])
def test_nm_mask_keeps_the_n_largest_of_every_asp_channel_group(shape, n, m):
  scores = jax.random.normal(jax.random.PRNGKey(sum(shape)), shape)
  mask = np.asarray(masking.nm_mask(scores, masking.NMPattern(n, m)))
  expected = _top_n_of_groups(_asp_groups(np.asarray(scores), m), n)
  assert mask.shape == shape and mask.dtype == bool
  np.testing.assert_array_equal(_asp_groups(mask, m), expected)


def test_a_conv_mask_valid_along_flattened_rows_but_not_along_channels_is_caught():
  """Every input channel kept at one kernel position, nothing elsewhere: each run of four
  in the flattened [out, in*3*3] row holds one weight, each channel group holds four."""
  torch_mask = np.zeros((2, 4, 3, 3), bool)  # [K, C, R, S]
  torch_mask[:, :, 0, 0] = True
  assert _flattened_row_groups(torch_mask, 4).sum(-1).max() == 1
  flax_mask = torch_mask.transpose(2, 3, 1, 0)
  counts = np.asarray(masking.nm_group_counts(flax_mask, 4))
  assert counts.max() == 4 and counts.sum() == 8
  layer = sparsity.PrunableLayer(name="conv", path=("conv",), shape=flax_mask.shape, kind="conv")
  plan = sparsity.SparsityPlan(layers=(layer,), prune_counts={"conv": 36}, method="pattern 2:4",
                               target=0.5, pattern=masking.NMPattern(2, 4))
  checked = sparsity.check_pattern(plan, {"conv": {"kernel": flax_mask}})
  assert checked["nm_valid"] is False and checked["groups"] == 3 * 3 * 2
  fixed = np.asarray(masking.nm_mask(jnp.asarray(flax_mask, jnp.float32), masking.NMPattern(2, 4)))
  assert sparsity.check_pattern(plan, {"conv": {"kernel": fixed}})["nm_valid"] is True
  assert _asp_groups(fixed, 4).sum(-1).max() == 2


@pytest.mark.parametrize("shape", [(3, 3, 3, 8), (3, 3, 1, 8), (3, 3, 6, 8), (6, 8)])
def test_a_kernel_fits_a_pattern_when_its_input_channels_split_into_whole_groups(shape):
  pattern = masking.NMPattern(2, 4)
  assert pattern.fits(shape) == (shape[-2] % 4 == 0)
  if not pattern.fits(shape):
    with pytest.raises(ValueError, match="no whole groups of 4 along its input channels"):
      masking.nm_mask(jnp.ones(shape), pattern)


def test_nm_mask_keeps_exactly_n_when_every_score_ties():
  mask = np.asarray(masking.nm_mask(jnp.ones((3, 3, 4, 6)), masking.NMPattern(2, 4)))
  groups = _asp_groups(mask, 4)
  assert np.all(groups.sum(-1) == 2)
  assert np.all(groups[..., :2]) and not np.any(groups[..., 2:])  # lower channel first


def test_parse_pattern_accepts_n_below_m_only():
  assert masking.parse_pattern("unstructured") is None
  assert masking.parse_pattern("2:4") == masking.NMPattern(2, 4)
  for text in ("4:4", "0:4", "5:4", "2-4", "2:4:8", "two:four"):
    with pytest.raises(ValueError, match="search.pattern must be"):
      masking.parse_pattern(text)


def _pattern_config(job, pattern="2:4", **search):
  config = tiny_config(job)
  config.search.sparsity_plan = "l1"
  config.search.pattern = pattern
  for key, value in search.items():
    config.search[key] = value
  return config


def test_pattern_plan_masks_every_fitting_layer_and_leaves_the_rest_dense(tiny_job):
  setup = setup_of(_pattern_config(tiny_job))
  plan = setup.plan
  # The first conv sees one channel: 1 * 3 * 3 = 9 weights per output, no multiple of 4.
  assert plan.unfit_layers == ("conv1",)
  assert plan.prune_counts["conv1"] == 0 and plan.prune_counts["linear"] == 0  # classifier: dense
  for layer in plan.masked_layers:
    assert layer.kind == "conv" and plan.keep_count(layer) * 2 == layer.size
  assert plan.target == 0.5
  assert all(rule == masking.NMPattern(2, 4)
             for rule in jax.tree.leaves(plan.keep_counts()))


def test_magnitude_init_starts_at_the_nm_magnitude_mask(tiny_job):
  setup = setup_of(_pattern_config(tiny_job))
  masks = traverse_util.flatten_dict(jax.device_get(magnitude_masks(setup)))
  params = traverse_util.flatten_dict(jax.device_get(setup.params))
  for path, mask in masks.items():
    expected = _top_n_of_groups(_asp_groups(np.abs(params[path]), 4), 2)
    np.testing.assert_array_equal(_asp_groups(mask, 4), expected)


def test_a_plan_or_layer_override_beside_a_pattern_is_refused(tiny_job):
  for field, value in (("sparsity_plan", "erk"), ("layer_overrides", {"conv1": 0.5})):
    config = _pattern_config(tiny_job)
    config.search[field] = value
    with pytest.raises(ValueError, match="sets every masked layer's sparsity"):
      spec_lib.resolve(config)


def test_check_pattern_finds_a_group_that_keeps_too_many(tiny_job):
  setup = setup_of(_pattern_config(tiny_job))
  masks = traverse_util.flatten_dict(jax.device_get(magnitude_masks(setup)))
  assert sparsity.check_pattern(setup.plan, traverse_util.unflatten_dict(masks))["nm_valid"]
  path = next(iter(masks))
  broken = np.array(masks[path])
  broken.reshape(-1)[:] = True
  masks[path] = broken
  checked = sparsity.check_pattern(setup.plan, traverse_util.unflatten_dict(masks))
  assert checked["nm_valid"] is False and checked["pattern"] == "2:4"


def test_a_2_4_search_keeps_the_pattern_and_exports_it_in_asp_layout(tiny_job, tmp_path):
  config = _pattern_config(tiny_job, classifier="plan", score_init="kaiming")
  workdir = tmp_path / "run"
  report = job.search_and_evaluate(config, workdir)
  assert report["sparsity"]["pattern"] == "2:4" and report["sparsity"]["nm_valid"] is True
  assert report["sparsity"]["unfit_layers"] == ["conv1"]
  assert report["search"]["pattern"] == "2:4" and report["target_sparsity"] == 0.5
  accuracy = report["accuracy"]
  assert None not in (accuracy["magnitude_recalibrated"], accuracy["wanda"],
                      accuracy["wanda_recalibrated"])
  assert report["wanda_images"] == 64  # 512 asked, the 64 searched images whole batches hold
  assert report["search"]["steps"] > 0
  for name, fraction in report["sparsity"]["per_layer"].items():
    assert fraction == (0.0 if name == "conv1" else 0.5), name

  exported = torch.load(workdir_export.export_workdir(workdir, tmp_path / "jackpot.pth"))
  checked = 0
  for name in report["sparsity"]["per_layer"]:
    if name == "conv1":
      continue
    weight = exported[f"{name}.weight"]  # [K, C, R, S]
    channels_last = weight.permute(*range(2, weight.ndim), 0, 1)  # ASP's [R, S, K, C]
    nonzero = (channels_last.reshape(-1, 4) != 0).sum(-1)
    assert int(nonzero.max()) <= 2, name
    checked += 1
  assert checked == len(report["sparsity"]["per_layer"]) - 1


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")
def test_nm_masked_linear_runs_as_a_semi_structured_sparse_tensor():
  """Where CUDA is present, PyTorch's 2:4 kernels accept our mask and compute the same."""
  from torch.sparse import to_sparse_semi_structured  # pylint: disable=import-outside-toplevel
  out_features, in_features = 128, 256
  kernel = jax.random.normal(jax.random.PRNGKey(0), (in_features, out_features))
  mask = np.asarray(masking.nm_mask(jnp.abs(kernel), masking.NMPattern(2, 4)))
  weight = torch.from_numpy(np.asarray(kernel * mask).T.copy()).half().cuda()
  sparse = to_sparse_semi_structured(weight)
  inputs = torch.randn(64, in_features, dtype=torch.half, device="cuda")
  expected = torch.nn.functional.linear(inputs, weight)
  torch.testing.assert_close(torch.nn.functional.linear(inputs, sparse), expected,
                             rtol=1e-2, atol=1e-2)


@pytest.mark.parametrize("strides,padding,groups", [((1, 1), 1, 1), ((2, 2), 1, 1),
                                                    ((1, 1), 0, 2)])
def test_wanda_columns_are_the_im2col_norms_in_torch_order(strides, padding, groups):
  from jackpot_jax.models import layers  # pylint: disable=import-outside-toplevel
  from jackpot_jax.baselines import criteria  # pylint: disable=import-outside-toplevel
  inputs = np.array(jax.random.normal(jax.random.PRNGKey(1), (2, 6, 6, 4)))
  conv = layers.Conv(features=6, kernel_size=(3, 3), strides=strides, padding=padding,
                     groups=groups)
  computed = np.asarray(criteria._input_square_sums(conv, jnp.asarray(inputs)))
  # Written out: torch's unfold of the padded input, one column per (in, kh, kw).
  padded = torch.nn.functional.pad(torch.from_numpy(inputs).permute(0, 3, 1, 2),
                                   (padding,) * 4)
  columns = torch.nn.functional.unfold(padded, 3, stride=strides).numpy()  # (N, C*9, L)
  sums = np.square(columns).sum(axis=(0, 2)).reshape(4, 3, 3)
  per_in = 4 // groups
  for out in range(6):
    group = out // (6 // groups)
    expected = sums[group * per_in:(group + 1) * per_in].transpose(1, 2, 0)  # (kh, kw, in/g)
    np.testing.assert_allclose(computed[..., out], expected, rtol=1e-5)
  dense = np.asarray(criteria._input_square_sums(layers.Dense(features=3),
                                                 jnp.asarray(inputs.reshape(-1, 4))))
  np.testing.assert_allclose(dense[:, 0], np.square(inputs.reshape(-1, 4)).sum(0), rtol=1e-5)


def test_wanda_nm_keeps_the_largest_weight_times_column_norm(tiny_search):
  from jackpot_jax.baselines import criteria  # pylint: disable=import-outside-toplevel
  search = tiny_search
  plan = sparsity.build_pattern_plan(search.params, masking.NMPattern(2, 4))
  saliency = criteria.wanda_saliency(search.model, search.params, search.batch_stats, plan,
                                     [search.batch])
  masks = traverse_util.flatten_dict(criteria.criterion_masks(
      "wanda", model=search.model, params=search.params, batch_stats=search.batch_stats,
      plan=plan, batches=[search.batch]))
  for key, mask in masks.items():
    expected = _top_n_of_groups(_asp_groups(np.asarray(saliency[key]), 4), 2)
    np.testing.assert_array_equal(_asp_groups(np.asarray(mask), 4), expected)
  assert masks
