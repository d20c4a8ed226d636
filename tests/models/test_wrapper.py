"""Masking is a wrapper: a Flax model the library has never seen is masked and searched."""

import functools
import math
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import traverse_util

from jackpot_jax.search import masking, optim, scores as scores_lib, sparsity, steps
from jackpot_jax.models.wrapper import MASKS, masked

from conftest import sgd_config

ModuleDef = Any


class ExampleBlock(nn.Module):
  """A residual block as the Flax ImageNet example writes it."""

  filters: int
  conv: ModuleDef
  norm: ModuleDef

  @nn.compact
  def __call__(self, x):
    y = self.conv(self.filters, (3, 3))(x)
    y = nn.relu(self.norm()(y))
    y = self.conv(self.filters, (3, 3))(y)
    y = self.norm(scale_init=nn.initializers.zeros_init())(y)
    return nn.relu(x + y)


class ExampleNet(nn.Module):
  """Conv stem, one residual block, self-attention over the pixels, an Einsum and a Dense
  head: Conv, Dense, DenseGeneral (inside the attention) and Einsum kernels, plus a
  LayerNorm and an Embed that must stay unmasked."""

  num_classes: int = 4
  width: int = 8

  @nn.compact
  def __call__(self, x, train: bool = True):
    conv = functools.partial(nn.Conv, use_bias=False)
    norm = functools.partial(nn.BatchNorm, use_running_average=not train, momentum=0.9,
                             epsilon=1e-5)
    x = nn.relu(norm()(conv(self.width, (3, 3))(x)))
    x = ExampleBlock(self.width, conv=conv, norm=norm)(x)
    tokens = x.reshape(x.shape[0], -1, self.width)
    tokens = tokens + nn.Embed(tokens.shape[1], self.width)(jnp.arange(tokens.shape[1]))
    tokens = tokens + nn.MultiHeadDotProductAttention(num_heads=2)(nn.LayerNorm()(tokens))
    pooled = jnp.mean(tokens, axis=1)
    pooled = nn.Einsum((self.width, self.width), "bi,ij->bj")(pooled)
    return nn.Dense(self.num_classes)(nn.relu(pooled))


def _setup():
  images = jax.random.normal(jax.random.PRNGKey(1), (16, 6, 6, 3))
  labels = jnp.arange(16) % 4
  model = masked(ExampleNet())
  variables = model.init(jax.random.PRNGKey(0), images, train=False)
  return model, variables, {"image": images, "label": labels}


def test_the_wrapper_keeps_the_variable_tree_and_runs_dense_without_masks():
  model, variables, batch = _setup()
  plain = ExampleNet()
  plain_variables = plain.init(jax.random.PRNGKey(0), batch["image"], train=False)
  assert jax.tree.structure(plain_variables) == jax.tree.structure(variables)
  np.testing.assert_array_equal(model.apply(variables, batch["image"], train=False),
                                plain.apply(variables, batch["image"], train=False))


def test_every_kernel_kind_is_maskable_and_embeddings_norms_biases_are_not():
  _, variables, _ = _setup()
  layers = sparsity.prunable_layers(variables["params"])
  kinds = {layer.name: layer.kind for layer in layers}
  assert sum(kind == "conv" for kind in kinds.values()) == 3
  assert {name.split(".")[-1] for name, kind in kinds.items() if kind == "other"} == {
      "query", "key", "value", "out"}  # DenseGeneral kernels are 3-D
  assert kinds["Einsum.0"] == "dense" and kinds["Dense.0"] == "dense"  # PyTorch-style names
  assert not any("Embed" in name or "Norm" in name for name in kinds)


def test_masked_apply_equals_the_plain_model_with_masked_kernels():
  model, variables, batch = _setup()
  params = variables["params"]
  flat = traverse_util.flatten_dict(params)
  rng = np.random.default_rng(0)
  masks = {layer.path + ("kernel",): rng.random(layer.shape) < 0.5
           for layer in sparsity.prunable_layers(params)}
  effective = {key: value * masks[key] if key in masks else value for key, value in flat.items()}
  expected = ExampleNet().apply({**variables, "params": traverse_util.unflatten_dict(effective)},
                                batch["image"], train=False)
  got = model.apply({**variables, MASKS: traverse_util.unflatten_dict(masks)}, batch["image"],
                    train=False)
  np.testing.assert_allclose(got, expected, rtol=1e-6, atol=1e-6)


def test_a_mask_on_an_embedding_is_rejected():
  model, variables, batch = _setup()
  embedding = variables["params"]["Embed_0"]["embedding"]
  with pytest.raises(ValueError, match="masks no maskable kernel"):
    model.apply({**variables, MASKS: {"Embed_0": {"embedding": jnp.ones_like(embedding)}}},
                batch["image"], train=False)


def test_an_unseen_flax_model_is_searched_with_exact_counts_and_frozen_weights():
  model, variables, batch = _setup()
  params, batch_stats = variables["params"], variables["batch_stats"]
  plan = sparsity.build_sparsity_plan(params, sparsity=0.5, method="l1")
  keep_counts = plan.keep_counts()
  tx = optim.make_optimizer(sgd_config(learning_rate=0.5, weight_decay=0.0), 20)
  scores = scores_lib.init_scores(params, plan, "kaiming", jax.random.PRNGKey(2))
  state = steps.init_search_state(scores, keep_counts, batch_stats, tx)
  step = jax.jit(functools.partial(steps.search_step, model=model, keep_counts=keep_counts,
                                   tx=tx, bn_mode="recalibrate"))
  params_before = jax.tree.map(np.array, params)
  losses, flips = [], 0
  for _ in range(20):
    state, metrics = step(params, state, batch)
    losses.append(float(metrics["loss"]))
    flips += int(metrics["mask_flips"])
  expected = traverse_util.flatten_dict(keep_counts)
  for key, mask in traverse_util.flatten_dict(state.masks).items():
    assert int(np.sum(mask)) == expected[key], key
  assert len(expected) == len(sparsity.prunable_layers(params))
  assert flips > 0 and min(losses[-5:]) < losses[0]
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(params_before),
                                                  jax.tree.leaves(params)))
  np.testing.assert_array_equal(
      traverse_util.flatten_dict(masking.compute_masks(state.scores, keep_counts))[
          ("Dense_0", "kernel")], traverse_util.flatten_dict(state.masks)[("Dense_0", "kernel")])


def test_kaiming_scores_are_bounded_by_each_kernels_fan_in_dense_general_included():
  """U(-1/sqrt(fan_in), 1/sqrt(fan_in)) with the fan-in Flax initialises the kernel with:
  a query/key/value kernel (in, heads, head_dim) sums over `in`, an output projection
  (heads, head_dim, out) over heads * head_dim, a conv over kh * kw * in."""
  model, variables, batch = _setup()
  params = variables["params"]
  plan = sparsity.build_sparsity_plan(params, sparsity=0.5, method="uniform")
  fan_ins = scores_lib.kernel_fan_ins(model, batch["image"], train=False)
  scores = traverse_util.flatten_dict(
      scores_lib.init_scores(params, plan, "kaiming", jax.random.PRNGKey(0), fan_ins))
  width, heads = ExampleNet.width, 2
  expected = {"query": width, "key": width, "value": width, "out": heads * (width // heads)}
  assert {path[-1]: fan_in for path, fan_in in fan_ins.items()} == expected
  checked = set()
  for layer in plan.masked_layers:
    name = layer.path[-1]
    if name in expected:
      fan_in = expected[name]
      checked.add(name)
    else:  # Conv (kh, kw, in, out), Dense and Einsum (in, out)
      fan_in = math.prod(layer.shape[:-1])
    bound = 1 / math.sqrt(fan_in)
    largest = float(np.abs(np.asarray(scores[layer.path + ("kernel",)])).max())
    assert 0.8 * bound < largest <= bound, (layer.name, layer.shape, largest, bound)
  assert checked == set(expected)
