import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax import masking


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
