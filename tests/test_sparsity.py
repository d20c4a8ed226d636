import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jackpot_jax import masking, models, scores as scores_lib, sparsity


@pytest.fixture(scope="module")
def resnet20():
  spec = models.get_model_spec("resnet20")
  variables = spec.build(num_classes=10).init(jax.random.PRNGKey(0), jnp.ones((1, 8, 8, 3)))
  return spec, variables["params"]


def _kernels(params, layers):
  flat = traverse_util.flatten_dict(params)
  return {l.name: np.asarray(flat[l.path + ("kernel",)]) for l in layers}


def test_l1_plan_counts_target_conv_sparsity_within_one_weight_per_layer(resnet20):
  spec, params = resnet20
  plan = sparsity.build_sparsity_plan(params, sparsity=0.9, method="l1", spec=spec)
  scores = scores_lib.init_scores(params, plan, "magnitude", jax.random.PRNGKey(0))
  masks = masking.compute_masks(scores, plan.keep_counts())
  counted = sparsity.count_sparsity(params, masks)
  conv_layers = [l for l in plan.layers if l.kind == "conv"]
  conv_total = sum(l.size for l in conv_layers)
  assert abs(counted["conv"] - 0.9) * conv_total <= len(conv_layers)


def test_l1_plan_uses_one_global_magnitude_threshold(resnet20):
  spec, params = resnet20
  plan = sparsity.build_sparsity_plan(params, sparsity=0.8, method="l1", spec=spec)
  conv_layers = [l for l in plan.layers if l.kind == "conv"]
  kernels = _kernels(params, conv_layers)
  everything = np.sort(np.concatenate([np.abs(k).ravel() for k in kernels.values()]))
  threshold = everything[int(0.8 * everything.size)]
  for name, kernel in kernels.items():
    assert plan.prune_counts[name] == np.sum(np.abs(kernel) < threshold)
  assert plan.prune_counts["linear"] == 0  # classifier dense, as the reference


def test_uniform_plan_prunes_floor_of_target_in_every_conv(resnet20):
  spec, params = resnet20
  plan = sparsity.build_sparsity_plan(params, sparsity=0.95, method="uniform", spec=spec)
  for layer in plan.layers:
    expected = int(0.95 * layer.size) if layer.kind == "conv" else 0
    assert plan.prune_counts[layer.name] == expected


def test_erk_plan_meets_target_and_keeps_small_layers_denser(resnet20):
  spec, params = resnet20
  plan = sparsity.build_sparsity_plan(params, sparsity=0.9, method="erk", spec=spec)
  convs = [l for l in plan.layers if l.kind == "conv"]
  pruned = sum(plan.prune_counts[l.name] for l in convs)
  assert abs(pruned / sum(l.size for l in convs) - 0.9) < 0.01
  per_layer = plan.layer_sparsity()
  assert per_layer["conv1"] < per_layer["layer3.2.conv2"]  # 432 vs 36864 weights


def test_classifier_and_first_layer_policies(resnet20):
  spec, params = resnet20
  plan = sparsity.build_sparsity_plan(params, sparsity=0.5, method="uniform", spec=spec,
                                      classifier="plan", first_layer="dense")
  assert plan.prune_counts["linear"] == int(0.5 * 640)
  assert plan.prune_counts["conv1"] == 0
  assert "conv1" not in {l.name for l in plan.masked_layers}


def test_layer_overrides_match_names_by_pattern(resnet20):
  spec, params = resnet20
  plan = sparsity.build_sparsity_plan(params, sparsity=0.9, method="uniform", spec=spec,
                                      overrides={"layer3.*": 0.5, "conv1": 0.0})
  sizes = {l.name: l.size for l in plan.layers}
  assert plan.prune_counts["layer3.1.conv2"] == int(0.5 * sizes["layer3.1.conv2"])
  assert plan.prune_counts["layer2.0.conv1"] == int(0.9 * sizes["layer2.0.conv1"])
  assert plan.prune_counts["conv1"] == 0


@pytest.mark.parametrize("target", [-0.1, 1.0, 1.5])
def test_sparsity_outside_unit_interval_is_rejected(resnet20, target):
  spec, params = resnet20
  with pytest.raises(ValueError, match=r"search.sparsity must be in \[0, 1\)"):
    sparsity.build_sparsity_plan(params, sparsity=target, spec=spec)


def test_plan_that_empties_a_layer_is_rejected(resnet20):
  spec, params = resnet20
  shrunk = traverse_util.flatten_dict(params)
  shrunk[("layer1_0", "conv1", "kernel")] = shrunk[("layer1_0", "conv1", "kernel")] * 1e-9
  with pytest.raises(ValueError, match="leaves layer layer1.0.conv1 with no kept weight"):
    sparsity.build_sparsity_plan(traverse_util.unflatten_dict(shrunk), sparsity=0.9, spec=spec)


def test_override_pattern_matching_nothing_is_rejected(resnet20):
  spec, params = resnet20
  with pytest.raises(ValueError, match="matches no layer"):
    sparsity.build_sparsity_plan(params, sparsity=0.9, spec=spec, overrides={"nope*": 0.5})


def test_count_sparsity_labels_each_convention(resnet20):
  spec, params = resnet20
  plan = sparsity.build_sparsity_plan(params, sparsity=0.9, method="uniform", spec=spec)
  masks = masking.compute_masks(
      scores_lib.init_scores(params, plan, "random", jax.random.PRNGKey(0)), plan.keep_counts())
  counted = sparsity.count_sparsity(params, masks)
  assert counted["per_layer"]["linear"] == 0.0
  assert counted["all_weights"] < counted["prunable"] < counted["conv"]
  assert set(counted["conventions"]) == {"conv", "prunable", "all_weights"}
  dense = sparsity.count_sparsity(params, None)
  assert dense["conv"] == dense["prunable"] == dense["all_weights"] == 0.0
