import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jackpot_jax.baselines import criteria, overlap


def test_overlap_is_shared_over_kept_per_layer_and_overall():
  a = {"l1": {"kernel": jnp.array([True, True, False, False])},
       "l2": {"kernel": jnp.array([[True, False], [False, True]])}}
  b = {"l1": {"kernel": jnp.array([True, False, True, False])},
       "l2": {"kernel": jnp.array([[True, False], [False, True]])}}
  result = overlap.mask_overlap(a, b)
  assert result["per_layer"] == {"l1": 0.5, "l2": 1.0}
  assert result["overall"] == 3 / 4


def test_overlap_refuses_unequal_keep_counts():
  with pytest.raises(ValueError, match="equal keep counts"):
    overlap.mask_overlap({"l": {"kernel": jnp.array([True, True])}},
                         {"l": {"kernel": jnp.array([True, False])}})


@pytest.mark.parametrize("criterion", criteria.CRITERIA)
def test_every_criterion_keeps_the_plans_counts(tiny_search, criterion):
  search = tiny_search
  masks = criteria.criterion_masks(
      criterion, model=search.model, params=search.params, batch_stats=search.batch_stats,
      plan=search.plan, batches=[search.batch], input_shape=(8, 8, 3))
  flat = traverse_util.flatten_dict(masks)
  expected = traverse_util.flatten_dict(search.keep_counts)
  assert set(flat) == set(expected)
  for key, mask in flat.items():
    assert int(np.sum(mask)) == expected[key]


def test_magnitude_criterion_is_the_magnitude_start(tiny_search):
  search = tiny_search
  masks = criteria.criterion_masks("magnitude", model=search.model, params=search.params,
                                   batch_stats=search.batch_stats, plan=search.plan)
  assert overlap.mask_overlap(masks, search.state.masks)["overall"] == 1.0


def test_snip_saliency_is_weight_times_gradient(tiny_search):
  search = tiny_search
  saliency = criteria.snip_saliency(search.model, search.params, search.batch_stats,
                                    search.plan, [search.batch])

  def loss(params):
    logits = search.model.apply({"params": params, "batch_stats": search.batch_stats},
                                search.batch["image"])
    return jax.numpy.mean(
        -jax.nn.log_softmax(logits)[jnp.arange(4), search.batch["label"]])

  grads = traverse_util.flatten_dict(jax.grad(loss)(search.params))
  weights = traverse_util.flatten_dict(search.params)
  for key, value in saliency.items():
    np.testing.assert_allclose(value, np.abs(weights[key] * grads[key]), rtol=1e-4, atol=1e-7)
