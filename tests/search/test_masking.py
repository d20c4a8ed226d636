import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax.bounded_cache import BoundedCache
from jackpot_jax.search import masking


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("keep_count", [0, 1, 7, 23, 24])
def test_topk_mask_keeps_exactly_k_largest(jit, keep_count):
  scores = jax.random.normal(jax.random.PRNGKey(0), (2, 3, 4))
  fn = jax.jit(masking.topk_mask, static_argnums=1) if jit else masking.topk_mask
  mask = np.asarray(fn(scores, keep_count))
  assert mask.dtype == bool and mask.shape == scores.shape
  assert mask.sum() == keep_count
  if 0 < keep_count < scores.size:
    assert np.asarray(scores)[mask].min() > np.asarray(scores)[~mask].max()


@pytest.mark.parametrize("jit", [False, True])
def test_topk_mask_breaks_full_ties_towards_lower_index(jit):
  fn = jax.jit(masking.topk_mask, static_argnums=1) if jit else masking.topk_mask
  mask = np.asarray(fn(jnp.ones((3, 5)), 6)).ravel()
  assert mask.sum() == 6
  np.testing.assert_array_equal(np.flatnonzero(mask), np.arange(6))


def test_topk_mask_breaks_partial_ties_deterministically():
  scores = jnp.array([0.5, 1.0, 1.0, 1.0, 0.2, 1.0])
  np.testing.assert_array_equal(np.asarray(masking.topk_mask(scores, 3)),
                                [False, True, True, True, False, False])


def test_topk_mask_rejects_keep_count_outside_range():
  with pytest.raises(ValueError, match="keep_count"):
    masking.topk_mask(jnp.ones(4), 5)


def _tie_heavy_layers(seed: int) -> list[np.ndarray]:
  """Layers whose scores tie a lot, with -0.0, +0.0 and denormals among them: the values
  where a method that compares floats instead of bit patterns would disagree."""
  rng = np.random.default_rng(seed)
  layers = []
  for size in (5, 64, 1000):
    values = rng.integers(-3, 3, size) * rng.choice([1.0, 0.5, 1e-40], size)
    values = values.astype(np.float32)
    values[rng.random(size) < 0.15] = -0.0
    layers.append(values.reshape(-1, 1) if size == 64 else values)
  return layers


@pytest.mark.parametrize("jit", [False, True])
@pytest.mark.parametrize("method", sorted(masking.TOPK_METHODS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_every_exact_topk_method_matches_lax_top_k_bit_for_bit(method, seed, jit):
  layers = _tie_heavy_layers(seed)
  for density in (0.0, 0.02, 0.5, 0.97, 1.0):
    keep_counts = [int(round(density * layer.size)) for layer in layers]
    select = functools.partial(masking.topk_masks, keep_counts=keep_counts, method=method)
    select = jax.jit(select) if jit else select
    for layer, keep_count, mask in zip(layers, keep_counts, select(layers)):
      _, kept = jax.lax.top_k(jnp.asarray(layer).reshape(-1), max(keep_count, 1))
      expected = np.zeros(layer.size, bool)
      expected[np.asarray(kept)[:keep_count]] = True
      np.testing.assert_array_equal(np.asarray(mask).reshape(-1), expected)


@pytest.mark.parametrize("by_platform", [
    {"cpu": "bisection", "cuda": "bisection", "rocm": "bisection", "tpu": "bisection"},
    {"cpu": "bisection", "cuda": "sort", "rocm": "sort", "tpu": "top_k"}])
def test_the_platform_choice_traces_each_chosen_method_once(by_platform, monkeypatch):
  """A switch over platforms traces every branch it is given: each chosen method is traced
  once, however many platforms share it."""
  traced = []

  def counted(name):
    method = masking.TOPK_METHODS[name]

    def trace(*args):
      traced.append(name)
      return method(*args)
    return trace

  monkeypatch.setattr(masking, "TOPK_METHOD_BY_PLATFORM", by_platform)
  monkeypatch.setattr(masking, "TOPK_METHODS",
                      {name: counted(name) for name in masking.TOPK_METHODS})
  layers = _tie_heavy_layers(2)
  keep_counts = [layer.size // 3 for layer in layers]
  chosen = jax.jit(lambda ls: masking.topk_masks(ls, keep_counts))(layers)
  assert sorted(traced) == sorted(set(by_platform.values()))
  for mask, expected in zip(chosen, masking.topk_masks(layers, keep_counts, "top_k")):
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(expected))


def test_platform_choice_is_an_exact_method_for_every_platform():
  assert set(masking.TOPK_METHOD_BY_PLATFORM.values()) <= set(masking.TOPK_METHODS)
  layers = _tie_heavy_layers(3)
  keep_counts = [layer.size // 3 for layer in layers]
  chosen = jax.jit(lambda ls: masking.topk_masks(ls, keep_counts))(layers)
  reference = masking.topk_masks(layers, keep_counts, "top_k")
  for mask, expected in zip(chosen, reference):
    np.testing.assert_array_equal(np.asarray(mask), np.asarray(expected))


def test_straight_through_is_exact_mask_forward_and_identity_backward():
  scores = jnp.array([0.3, -0.7, 1e-3, 2.0])
  mask = jnp.array([True, False, True, False])
  np.testing.assert_array_equal(masking.straight_through(scores, mask), [1.0, 0.0, 1.0, 0.0])
  upstream = jnp.array([1.5, -2.0, 0.25, 4.0])
  grad = jax.grad(lambda s: jnp.sum(masking.straight_through(s, mask) * upstream))(scores)
  np.testing.assert_array_equal(grad, upstream)


def test_count_flips_counts_changed_entries_over_all_layers():
  old = {"a": jnp.array([True, False, True]), "b": {"kernel": jnp.array([[True, True]])}}
  new = {"a": jnp.array([False, False, True]), "b": {"kernel": jnp.array([[False, True]])}}
  assert int(masking.count_flips(old, new)) == 2


def test_flips_per_layer_names_layers_as_pytorch_does_and_sums_to_count_flips():
  old = {"layer1_0": {"conv1": {"kernel": jnp.array([True, False, True])}},
         "fc": {"kernel": jnp.array([[True, True], [False, False]])}}
  new = {"layer1_0": {"conv1": {"kernel": jnp.array([False, True, True])}},
         "fc": {"kernel": jnp.array([[False, True], [False, False]])}}
  per_layer = {name: int(v) for name, v in masking.flips_per_layer(old, new).items()}
  assert per_layer == {"layer1.0.conv1": 2, "fc": 1}
  assert sum(per_layer.values()) == int(masking.count_flips(old, new))


def test_traced_keep_counts_give_the_static_topk_masks_bit_for_bit():
  """The ramp's keep counts are traced from the step: one program, every count, and the
  same masks (ties to the lower index) as the static top-k gives each count."""
  layers = _tie_heavy_layers(4)
  select = jax.jit(masking.topk_masks_traced)
  for density in (0.0, 0.02, 0.5, 0.97, 1.0):
    keep_counts = [int(round(density * layer.size)) for layer in layers]
    traced = select(layers, jnp.asarray(keep_counts, jnp.int32))
    for mask, expected in zip(traced, masking.topk_masks(layers, keep_counts, "top_k")):
      np.testing.assert_array_equal(np.asarray(mask), np.asarray(expected))


def _capped(ranking, old, new, cap):
  masks = jax.jit(masking.cap_flips)([jnp.asarray(old)], [jnp.asarray(new)],
                                     [jnp.asarray(ranking, jnp.float32)], jnp.int32(cap))
  return np.asarray(masks[0])


def test_cap_flips_swaps_the_best_newcomers_for_the_worst_incumbents():
  ranking = [0.1, 0.9, 0.8, 0.7, 0.5, 0.6, 0.4, 0.2]
  old = np.array([1, 0, 0, 0, 1, 1, 1, 0], bool)  # 0.1, 0.5, 0.6, 0.4 kept
  new = np.array([0, 1, 1, 1, 0, 1, 0, 0], bool)  # the top 4: 0.9, 0.8, 0.7, 0.6
  # Three swaps wanted; two allowed: 0.9 and 0.8 enter, 0.1 and 0.4 leave.
  np.testing.assert_array_equal(_capped(ranking, old, new, 2), [0, 1, 1, 0, 1, 1, 0, 0])
  for cap in (3, 10):  # within the cap the new mask is taken whole
    np.testing.assert_array_equal(_capped(ranking, old, new, cap), new)
  np.testing.assert_array_equal(_capped(ranking, old, new, 0), old)


def test_cap_flips_also_drops_what_a_shrinking_keep_count_drops():
  ranking = [0.1, 0.9, 0.8, 0.7, 0.5, 0.6, 0.4, 0.2]
  old = np.array([1, 0, 0, 0, 1, 1, 1, 0], bool)  # 4 kept
  new = np.array([0, 1, 1, 0, 0, 0, 0, 0], bool)  # the top 2
  # One swap allowed (0.9 for 0.1), and two more incumbents leave (0.4, then 0.5).
  capped = _capped(ranking, old, new, 1)
  np.testing.assert_array_equal(capped, [0, 1, 0, 0, 0, 1, 0, 0])
  assert capped.sum() == new.sum()


def test_cap_flips_never_swaps_more_than_the_cap_and_keeps_the_count():
  rng = np.random.default_rng(0)
  for size, keep in ((50, 10), (200, 150), (1000, 3)):
    before, after = rng.normal(size=size), rng.normal(size=size)
    old = np.asarray(masking.topk_mask(jnp.asarray(before, jnp.float32), keep))
    new = np.asarray(masking.topk_mask(jnp.asarray(after, jnp.float32), keep))
    for cap in (0, 1, 2, 5):
      capped = _capped(after, old, new, cap)
      assert capped.sum() == keep
      assert (capped & ~old).sum() == min(cap, (new & ~old).sum())


def test_compiled_masks_trace_once_per_keep_counts_and_match_the_op_by_op_masks(monkeypatch):
  monkeypatch.setattr(masking, "_masks_programs", BoundedCache(16))
  traced = []
  real = masking.compute_masks

  def counted(*args, **kwargs):
    traced.append(1)
    return real(*args, **kwargs)

  monkeypatch.setattr(masking, "compute_masks", counted)
  scores = {"a": jax.random.normal(jax.random.PRNGKey(0), (6, 5)),
            "b": jax.random.normal(jax.random.PRNGKey(1), (3, 3, 8, 4))}
  first = masking.compiled_masks(scores, {"a": 7, "b": masking.NMPattern(2, 4)})
  again = masking.compiled_masks(scores, {"a": 7, "b": masking.NMPattern(2, 4)})
  assert len(traced) == 1  # equal keep counts, another dict: the same program
  other = masking.compiled_masks(scores, {"a": 9, "b": masking.NMPattern(2, 4)})
  assert len(traced) == 2
  for masks, counts in ((first, 7), (again, 7), (other, 9)):
    expected = real(scores, {"a": counts, "b": masking.NMPattern(2, 4)})
    for name in scores:
      np.testing.assert_array_equal(masks[name], expected[name])
    assert int(masks["a"].sum()) == counts
