"""Score inits, sparsity plans, pruning criteria and augmentations are chosen by name from
registries: one decorated function adds a choice that the config, the library and the
one-line errors all see."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jackpot_jax import cli
from jackpot_jax.run import spec as spec_lib
from jackpot_jax.search import scores as scores_lib, sparsity
from jackpot_jax.baselines import criteria
from jackpot_jax.data import config as data_config, preprocessing, resolved_preprocessing, transforms

from conftest import tiny_config

REGISTRIES = (scores_lib.SCORE_INIT_REGISTRY, sparsity.PLAN_REGISTRY,
              criteria.CRITERION_REGISTRY, transforms.AUGMENTATION_REGISTRY)


@pytest.fixture
def registries():
  """Takes back every name the test registers, so the registries stay as shipped."""
  shipped = {registry: registry.names() for registry in REGISTRIES}
  yield
  for registry, names in shipped.items():
    for name in set(registry.names()) - set(names):
      registry.unregister(name)


def _two_layers():
  """Two dense kernels of distinct magnitudes, and a plan pruning half of each."""
  params = {"a": {"kernel": np.arange(1.0, 13.0, dtype=np.float32).reshape(3, 4)},
            "b": {"kernel": -np.arange(1.0, 9.0, dtype=np.float32).reshape(4, 2)}}
  return params, sparsity.build_sparsity_plan(params, sparsity=0.5, method="uniform")


def test_the_shipped_choices_are_registered_and_the_old_constants_follow_the_registries():
  assert scores_lib.score_init_names() == scores_lib.SCORE_INITS == (
      "magnitude", "magnitude_abs", "kaiming", "edge_popup", "random")
  assert sparsity.plan_names() == sparsity.PLANS == ("l1", "uniform", "erk")
  assert criteria.criterion_names() == criteria.CRITERIA == (
      "magnitude", "random", "snip", "grasp", "synflow", "wanda")
  assert transforms.augmentation_names() == data_config.AUGMENTATIONS == (
      "cifar", "imagenet", "none")
  assert [scores_lib.ranks_by_magnitude(n) for n in scores_lib.score_init_names()] == [
      False, False, False, True, False]
  assert [scores_lib.needs_fan_ins(n) for n in scores_lib.score_init_names()] == [
      False, False, True, True, False]


def test_a_registered_score_init_is_accepted_used_listed_and_suggested(registries, tiny_job,
                                                                       capsys):
  @scores_lib.register_init("prune_count", ranks_by_magnitude=True)
  def prune_count(weight, context):
    return jnp.full(weight.shape, context.prune_count, jnp.float32)

  config = tiny_config(tiny_job)
  config.search.score_init = "prune_count"
  spec_lib.resolve(config)
  params, plan = _two_layers()
  scores = traverse_util.flatten_dict(
      scores_lib.init_scores(params, plan, "prune_count", jax.random.PRNGKey(0)))
  for layer in plan.masked_layers:
    np.testing.assert_array_equal(scores[layer.path + ("kernel",)],
                                  np.full(layer.shape, plan.prune_counts[layer.name]))
  assert scores_lib.ranks_by_magnitude("prune_count")
  assert not scores_lib.needs_fan_ins("prune_count")
  with pytest.raises(SystemExit):
    cli._flags_parser(["jackpot", "search", "--help"])
  assert ("registered: magnitude | magnitude_abs | kaiming | edge_popup | random | prune_count"
          in capsys.readouterr().out.replace("\n      ", " "))

  config.search.score_init = "prune_cout"
  with pytest.raises(ValueError) as error:
    spec_lib.resolve(config)
  assert str(error.value) == (
      "unknown search.score_init 'prune_cout' (did you mean 'prune_count'?); choose one of "
      "magnitude, magnitude_abs, kaiming, edge_popup, random, prune_count")


def test_a_registered_plan_is_accepted_used_listed_and_suggested(registries, tiny_job):
  @sparsity.register_plan("first_half")
  def first_half(params, layers, target):
    del params, target
    return {l.name: l.size // 2 if i == 0 else 0 for i, l in enumerate(layers)}

  config = tiny_config(tiny_job)
  config.search.sparsity_plan = "first_half"
  spec_lib.resolve(config)
  params, _ = _two_layers()
  plan = sparsity.plan_for(params, config.search, None)
  assert plan.method == "first_half" and plan.prune_counts == {"a": 6, "b": 0}

  config.search.sparsity_plan = "first_hal"
  with pytest.raises(ValueError, match=r"^unknown search.sparsity_plan 'first_hal' \(did you "
                                       r"mean 'first_half'\?\); choose one of l1, uniform, erk, "
                                       r"first_half$"):
    spec_lib.resolve(config)


def test_a_registered_criterion_is_used_listed_and_suggested(registries):
  @criteria.register_criterion("smallest")
  def smallest(inputs):
    return {k: -jnp.abs(v) for k, v in inputs.kernels().items()}

  params, plan = _two_layers()
  masks = traverse_util.flatten_dict(criteria.criterion_masks(
      "smallest", model=None, params=params, batch_stats={}, plan=plan))
  np.testing.assert_array_equal(masks[("a", "kernel")],
                                np.arange(12).reshape(3, 4) < 6)
  np.testing.assert_array_equal(masks[("b", "kernel")], np.arange(8).reshape(4, 2) < 4)
  with pytest.raises(ValueError, match=r"^unknown criterion 'smalest' \(did you mean "
                                       r"'smallest'\?\); choose one of .*, wanda, smallest$"):
    criteria.criterion_masks("smalest", model=None, params=params, batch_stats={}, plan=plan)


def test_a_registered_augmentation_is_accepted_used_listed_and_suggested(registries):
  @transforms.register_augmentation("mirror", default_size=6)
  def mirror(images, preprocessing, shape, seed, global_size, rows):
    del preprocessing, shape, seed, global_size, rows
    return [image[:, ::-1] for image in images]

  spec = data_config.resolve_spec({"name": "npz:data.npz", "augment": "mirror"})
  assert spec.augment == "mirror"
  augmentation = preprocessing.choose_augmentation(spec, (6, 6, 1))
  assert augmentation == ("mirror", "config", 6)
  used = resolved_preprocessing.Preprocessing(
      channels=1, channels_from="config", mean=(0.5,), std=(0.25,), statistics="config",
      augment="mirror", augment_from="config", image_size=augmentation.image_size,
      crop_padding=4)
  image = np.arange(36, dtype=np.uint8).reshape(6, 6, 1)
  np.testing.assert_array_equal(
      transforms.train_images([image], used, image.shape, (0, 0), 1, slice(0, 1))[0],
      image[:, ::-1])
  np.testing.assert_array_equal(transforms.eval_image(image, used, image.shape), image)
  with pytest.raises(ValueError, match=r"^unknown data.augment 'miror' \(did you mean "
                                       r"'mirror'\?\); choose one of cifar, imagenet, none, "
                                       r"mirror$"):
    data_config.resolve_spec({"name": "npz:data.npz", "augment": "miror"})


@pytest.mark.parametrize("register, name", [
    (scores_lib.register_init, "magnitude"), (sparsity.register_plan, "l1"),
    (criteria.register_criterion, "snip"), (transforms.register_augmentation, "cifar")])
def test_registering_a_name_twice_is_an_error(registries, register, name):
  registry = next(r for r in REGISTRIES if name in r.names())
  shipped = registry.get(name)
  with pytest.raises(ValueError, match=f"^{registry.field} '{name}' is registered twice"):
    register(name)(lambda *args: None)
  assert registry.get(name) is shipped
