import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jackpot_jax import models
from jackpot_jax.search import masking, scores as scores_lib, sparsity


@pytest.fixture(scope="module")
def setup():
  spec = models.get_model_spec("resnet20")
  params = spec.build(num_classes=10).init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)))["params"]
  plan = sparsity.build_sparsity_plan(params, sparsity=0.9, method="l1", spec=spec)
  return params, plan


def _magnitude_pruning_mask(weight: np.ndarray, keep: int) -> np.ndarray:
  """Layer-wise magnitude pruning, computed independently of the library."""
  order = np.argsort(-np.abs(weight).ravel(), kind="stable")
  mask = np.zeros(weight.size, bool)
  mask[order[:keep]] = True
  return mask.reshape(weight.shape)


@pytest.mark.parametrize("method", ["magnitude", "magnitude_abs"])
def test_magnitude_inits_start_from_layerwise_magnitude_mask(setup, method):
  params, plan = setup
  scores = scores_lib.init_scores(params, plan, method, jax.random.PRNGKey(0))
  masks = traverse_util.flatten_dict(masking.compute_masks(scores, plan.keep_counts()))
  flat_params = traverse_util.flatten_dict(params)
  for layer in plan.masked_layers:
    key = layer.path + ("kernel",)
    expected = _magnitude_pruning_mask(np.asarray(flat_params[key]), plan.keep_count(layer))
    np.testing.assert_array_equal(np.asarray(masks[key]), expected, err_msg=layer.name)


def test_magnitude_init_uses_reference_values(setup):
  params, plan = setup
  scores = traverse_util.flatten_dict(
      scores_lib.init_scores(params, plan, "magnitude", jax.random.PRNGKey(0)))
  for layer in plan.masked_layers:
    values = np.asarray(scores[layer.path + ("kernel",)])
    assert set(np.unique(values)) <= {np.float32(1.0), np.float32(0.99)}
    assert np.sum(values == np.float32(0.99)) == plan.prune_counts[layer.name]


def test_kaiming_scores_follow_edge_popup_bound(setup):
  params, plan = setup
  scores = traverse_util.flatten_dict(
      scores_lib.init_scores(params, plan, "kaiming", jax.random.PRNGKey(0)))
  for layer in plan.masked_layers:
    values = np.asarray(scores[layer.path + ("kernel",)])
    bound = 1 / math.sqrt(math.prod(layer.shape[:-1]))
    assert np.abs(values).max() <= bound and values.std() > bound / 4


def test_scores_exist_only_for_masked_layers(setup):
  params, plan = setup
  scores = traverse_util.flatten_dict(
      scores_lib.init_scores(params, plan, "random", jax.random.PRNGKey(0)))
  assert {k[:-1] for k in scores} == {l.path for l in plan.masked_layers}
  assert ("linear",) not in {k[:-1] for k in scores}


def test_unknown_score_init_is_rejected(setup):
  params, plan = setup
  with pytest.raises(ValueError, match="unknown search.score_init 'bogus'"):
    scores_lib.init_scores(params, plan, "bogus", jax.random.PRNGKey(0))


def test_edge_popup_keeps_the_largest_absolute_scores(setup):
  params, plan = setup
  scores = scores_lib.init_scores(params, plan, "edge_popup", jax.random.PRNGKey(1))
  assert scores_lib.ranks_by_magnitude("edge_popup")
  assert not scores_lib.ranks_by_magnitude("kaiming")
  masks = masking.compute_masks(scores, plan.keep_counts(), by_magnitude=True)
  flat_scores = traverse_util.flatten_dict(scores)
  for key, mask in traverse_util.flatten_dict(masks).items():
    expected = _magnitude_pruning_mask(np.asarray(flat_scores[key]), int(mask.sum()))
    np.testing.assert_array_equal(np.asarray(mask), expected, err_msg=str(key))
    # Kaiming-uniform scores are signed: large negative scores are kept, unlike with the
    # signed ranking.
    assert np.any(np.asarray(flat_scores[key])[np.asarray(mask)] < 0), key
