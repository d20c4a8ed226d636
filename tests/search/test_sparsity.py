import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jackpot_jax import models
from jackpot_jax.search import masking, scores as scores_lib, sparsity


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
  assert set(counted["conventions"]) == {"conv", "linear", "prunable", "all_weights"}
  assert counted["linear"] == 0.0  # the classifier is ResNet-20's only Dense, kept dense
  dense = sparsity.count_sparsity(params, None)
  assert dense["conv"] == dense["prunable"] == dense["all_weights"] == 0.0


def test_count_sparsity_counts_the_layers_the_models_own_predicate_masks(resnet20):
  """A spec that masks only convolutions: its classifier is no layer of the count, so the
  prunable fraction is the conv fraction, not one diluted by the dense classifier."""
  spec, params = resnet20
  conv_only = dataclasses.replace(spec, maskable=lambda path, shape: len(shape) == 4
                                  and path[-1] == "kernel")
  plan = sparsity.build_sparsity_plan(params, sparsity=0.9, method="uniform", spec=conv_only)
  masks = masking.compute_masks(
      scores_lib.init_scores(params, plan, "random", jax.random.PRNGKey(0)), plan.keep_counts())
  counted = sparsity.count_sparsity(params, masks, conv_only.maskable)
  assert set(counted["per_layer"]) == {l.name for l in plan.layers} and "linear" not in (
      counted["per_layer"])
  conv_size = sum(l.size for l in plan.layers)
  pruned = sum(plan.prune_counts[l.name] for l in plan.layers)
  assert counted["prunable"] == counted["conv"] == pruned / conv_size


def _filled(params, value):
  return jax.tree.map(lambda leaf: np.full(np.shape(leaf), value, np.float32), params)


def _global_stable_counts(params, layers, target):
  """The tie rule spelled out: a stable argsort of the pooled magnitudes in layer order."""
  magnitudes = [np.abs(k).ravel() for k in _kernels(params, layers).values()]
  everything = np.concatenate(magnitudes)
  first = np.argsort(everything, kind="stable")[:int(target * everything.size)]
  layer_of = np.searchsorted(np.cumsum([m.size for m in magnitudes]), first, side="right")
  counts = np.bincount(layer_of, minlength=len(layers))
  return {l.name: int(c) for l, c in zip(layers, counts)}, first


def _pool(plan, spec):
  return [l for l in plan.layers if l.name != spec.classifier]


def _magnitude_masks(params, plan):
  """init_scores('magnitude') then compute_masks, jitted as one program (eager dispatch
  would compile every op per layer shape and keep count)."""
  masks = jax.jit(lambda p: masking.compute_masks(
      scores_lib.init_scores(p, plan, "magnitude", jax.random.PRNGKey(0)),
      plan.keep_counts()))(params)
  return traverse_util.flatten_dict(jax.device_get(masks))


def test_l1_plan_prunes_exactly_the_target_when_every_weight_ties(resnet20):
  spec, params = resnet20
  ones = _filled(params, 1.0)
  pool = [l for l in sparsity.prunable_layers(ones) if l.name != spec.classifier]
  counts = sparsity._l1_prune_counts(ones, pool, 0.9)
  assert sum(counts.values()) == int(0.9 * sum(l.size for l in pool))
  assert counts == _global_stable_counts(ones, pool, 0.9)[0]


def test_l1_plan_counts_nan_magnitudes_last_as_a_stable_sort(resnet20):
  spec, params = resnet20
  flat = traverse_util.flatten_dict(_filled(params, np.nan))
  flat[("conv1", "kernel")] = np.ones_like(flat[("conv1", "kernel")])
  broken = traverse_util.unflatten_dict(flat)
  pool = [l for l in sparsity.prunable_layers(broken) if l.name != spec.classifier]
  counts = sparsity._l1_prune_counts(broken, pool, 0.5)
  assert counts == _global_stable_counts(broken, pool, 0.5)[0]
  assert counts["conv1"] == pool[0].size


def test_l1_plan_gives_ties_to_the_earlier_layer(resnet20):
  spec, params = resnet20
  plan = sparsity.build_sparsity_plan(_filled(params, 1.0), sparsity=0.001, spec=spec)
  pool = _pool(plan, spec)
  first, *rest = pool
  cut = int(0.001 * sum(l.size for l in pool))
  assert 0 < cut < first.size
  assert plan.prune_counts[first.name] == cut
  assert not any(plan.prune_counts[l.name] for l in rest)


def test_l1_ties_follow_one_global_stable_order_down_to_the_magnitude_masks(resnet20):
  spec, params = resnet20
  rng = np.random.default_rng(0)
  # Five magnitudes only: thousands of weights tie at the threshold, across layers.
  tied = jax.tree.map(lambda leaf: np.round(rng.random(np.shape(leaf)) * 4).astype(np.float32) / 4,
                      params)
  plan = sparsity.build_sparsity_plan(tied, sparsity=0.5, method="l1", spec=spec)
  pool = _pool(plan, spec)
  expected, first = _global_stable_counts(tied, pool, 0.5)
  assert {l.name: plan.prune_counts[l.name] for l in pool} == expected
  assert sum(expected.values()) == int(0.5 * sum(l.size for l in pool))
  masks = _magnitude_masks(tied, plan)
  pruned = np.concatenate([~np.asarray(masks[l.path + ("kernel",)]).ravel() for l in pool])
  assert all(np.asarray(masks[l.path + ("kernel",)]).sum() == plan.keep_count(l) for l in pool)
  np.testing.assert_array_equal(np.flatnonzero(pruned), np.sort(first))


def test_magnitude_masks_keep_exactly_keep_count_when_every_weight_ties(resnet20):
  spec, params = resnet20
  ones = _filled(params, 1.0)
  plan = sparsity.build_sparsity_plan(ones, sparsity=0.9, method="uniform", spec=spec)
  masks = _magnitude_masks(ones, plan)
  for layer in plan.masked_layers:
    mask = np.asarray(masks[layer.path + ("kernel",)]).ravel()
    assert mask.sum() == plan.keep_count(layer)
    # The lower flat indices are pruned first, the same rule as the plan's.
    np.testing.assert_array_equal(np.flatnonzero(~mask), np.arange(plan.prune_counts[layer.name]))


def _random_params(name: str):
  """Seeded random parameters of a registry model: shapes from jax.eval_shape, so no
  real initialisation (ResNet-50's and torchvision VGG's would be slow)."""
  spec = models.get_model_spec(name)
  model = spec.build(num_classes=10)
  shapes = jax.eval_shape(lambda: model.init(jax.random.PRNGKey(0),
                                             jnp.zeros((1, *spec.input_shape)), train=False))
  rng = np.random.default_rng(0)
  params = jax.tree.map(lambda s: rng.random(s.shape, dtype=np.float32) - 0.5,
                        shapes["params"])
  return spec, params


@pytest.fixture(scope="module")
def torchvision_vgg():
  return _random_params("vgg19_bn")


@pytest.fixture(scope="module", params=["vgg19", "resnet50", "vgg19_bn"])
def reference_model(request, torchvision_vgg):
  if request.param == "vgg19_bn":
    return torchvision_vgg
  return _random_params(request.param)


# The authors' code pools every conv (first conv and downsample convs included) and keeps
# the classifier dense; convs per model, and convs the test names outright.
AUTHORS_CONVS = {"vgg19": (16, {"features.0"}),
                 "vgg19_bn": (16, {"features.0"}),
                 "resnet50": (53, {"conv1", "layer1.0.downsample.0", "layer2.0.downsample.0",
                                   "layer3.0.downsample.0", "layer4.0.downsample.0"})}


@pytest.mark.parametrize("method", ["l1", "uniform"])
def test_default_policies_pool_every_conv_as_the_authors_code(reference_model, method):
  spec, params = reference_model
  plan = sparsity.build_sparsity_plan(params, sparsity=0.9, method=method, spec=spec)
  convs = {l.name for l in plan.layers if l.kind == "conv"}
  count, named = AUTHORS_CONVS[spec.name]
  assert len(convs) == count and named <= convs
  assert {l.name for l in plan.masked_layers} == convs
  for layer in plan.layers:
    if layer.kind == "dense":  # the classifier and torchvision VGG's hidden layers
      assert plan.keep_count(layer) == layer.size
  if method == "l1":  # exact: the target is over the conv weights, as the paper's
    conv_total = sum(l.size for l in plan.layers if l.kind == "conv")
    assert sum(plan.prune_counts[name] for name in convs) == int(0.9 * conv_total)


def test_hidden_dense_plan_pools_torchvision_vgg_hidden_layers(torchvision_vgg):
  spec, params = torchvision_vgg
  plan = sparsity.build_sparsity_plan(params, sparsity=0.9, spec=spec, hidden_dense="plan")
  pooled = {l.name for l in plan.masked_layers}
  assert {"classifier.0", "classifier.3"} <= pooled
  assert spec.classifier not in pooled
  assert pooled == {l.name for l in plan.layers if l.name != spec.classifier}


def test_layer_overrides_reach_hidden_dense_layers(torchvision_vgg):
  spec, params = torchvision_vgg
  plan = sparsity.build_sparsity_plan(params, sparsity=0.9, method="uniform", spec=spec,
                                      overrides={"classifier.3": 0.5})
  sizes = {l.name: l.size for l in plan.layers}
  assert plan.prune_counts["classifier.3"] == int(0.5 * sizes["classifier.3"])
  assert plan.prune_counts["classifier.0"] == 0


def _one_line_error(match, **kwargs):
  with pytest.raises(ValueError, match=match) as error:
    sparsity.build_sparsity_plan(**kwargs)
  assert "\n" not in str(error.value)


@pytest.mark.parametrize("policy", ["classifier", "first_layer", "hidden_dense"])
def test_unknown_layer_policy_is_rejected_in_one_line(resnet20, policy):
  spec, params = resnet20
  _one_line_error(rf"search.{policy} must be one of \('dense', 'plan'\), got 'sparse'",
                  params=params, sparsity=0.9, spec=spec, **{policy: "sparse"})


def test_plan_that_masks_nothing_is_rejected_in_one_line(resnet20):
  spec, params = resnet20
  _one_line_error("prunes no weight of any layer", params=params, sparsity=0.0, spec=spec)
  _one_line_error("prunes no weight of any layer", params=params, sparsity=0.9, spec=spec,
                  method="uniform", overrides={"*": 0.0})


def test_plan_that_empties_a_layer_or_misses_an_override_fails_in_one_line(resnet20):
  spec, params = resnet20
  # Every weight tied: l1 gives the ties to the earlier layers first, emptying conv1.
  _one_line_error("leaves layer conv1 with no kept weight", params=_filled(params, 1.0),
                  sparsity=0.9, spec=spec)
  _one_line_error("pattern 'nope\\*' matches no layer", params=params, sparsity=0.9, spec=spec,
                  overrides={"nope*": 0.5})
