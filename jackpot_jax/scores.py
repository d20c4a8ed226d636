"""Score initialisations: one trainable score per weight of every masked layer."""

from __future__ import annotations

import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jackpot_jax import masking
from jackpot_jax.sparsity import SparsityPlan

SCORE_INITS = ("magnitude", "magnitude_abs", "kaiming", "edge_popup", "random")
# Inits whose masks rank |score| rather than the signed score.
RANKED_BY_MAGNITUDE = ("edge_popup",)
# Inits whose scores are bounded by each kernel's fan-in (`kernel_fan_ins`).
FAN_IN_INITS = ("kaiming", "edge_popup")


def ranks_by_magnitude(method: str) -> bool:
  """Whether the search with this init keeps the largest |score| (edge-popup)."""
  return method in RANKED_BY_MAGNITUDE

# The reference code's values: pruned entries start just below the kept ones, so the
# first top-k mask is the magnitude mask while every score starts almost equal.
MAGNITUDE_KEPT, MAGNITUDE_PRUNED = 1.0, 0.99


def _magnitude(weight: jax.Array, prune_count: int) -> jax.Array:
  flat = jnp.abs(weight).reshape(-1)
  # Stable sort: among equal magnitudes the lower index is pruned first.
  smallest = jnp.argsort(flat, stable=True)[:prune_count]
  scores = jnp.full(flat.shape, MAGNITUDE_KEPT, jnp.float32).at[smallest].set(MAGNITUDE_PRUNED)
  return scores.reshape(weight.shape)


def _magnitude_pattern(weight: jax.Array, pattern: masking.NMPattern) -> jax.Array:
  """The N:M magnitude mask as scores: the n largest |w| of each group (ties: lower index)."""
  kept = masking.nm_mask(jnp.abs(weight).astype(jnp.float32), pattern)
  return jnp.where(kept, MAGNITUDE_KEPT, MAGNITUDE_PRUNED).astype(jnp.float32)


def _magnitude_abs(weight: jax.Array) -> jax.Array:
  magnitude = jnp.abs(weight).astype(jnp.float32)
  return magnitude / jnp.maximum(jnp.max(magnitude), jnp.finfo(jnp.float32).tiny)


def _kaiming(weight: jax.Array, rng: jax.Array, fan_in: int) -> jax.Array:
  """Edge-popup's scores, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(fan_in)
  return jax.random.uniform(rng, weight.shape, jnp.float32, -bound, bound)


def kernel_fan_ins(model: nn.Module, *inputs: Any, **call_kwargs: Any
                   ) -> dict[tuple[str, ...], int]:
  """The fan-in of every `nn.DenseGeneral` kernel of `model`, keyed by module path.

  A DenseGeneral kernel is (*input axes, *feature axes), so its shape does not say where
  the input axes end: an attention query/key/value kernel (in, heads, head_dim) has fan-in
  `in`, an output projection (heads, head_dim, out) heads * head_dim. Flax initialises it
  flattened to (prod(input axes), prod(feature axes)); the input axes are read off each
  call during an abstract `model.init(rng, *inputs, **call_kwargs)`, which computes no
  array (`inputs` may be `jax.ShapeDtypeStruct`s).
  """
  fan_ins = {}

  def record(next_fun, args, kwargs, context):
    module = context.module
    if isinstance(module, nn.DenseGeneral) and context.method_name == "__call__":
      shape = (args[0] if args else kwargs["inputs"]).shape
      axes = (module.axis,) if isinstance(module.axis, int) else tuple(module.axis)
      fan_ins[tuple(module.path)] = math.prod(shape[axis] for axis in axes)
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(functools.partial(model.init, **call_kwargs), jax.random.PRNGKey(0), *inputs)
  return fan_ins


def init_scores(params: Mapping[str, Any], plan: SparsityPlan, method: str,
                rng: jax.Array, fan_ins: Mapping[tuple[str, ...], int] | None = None) -> dict:
  """Builds the score tree (mirrors params, masked layers only, leaf `kernel`).

  Args:
    params: frozen pre-trained parameters.
    plan: the sparsity plan; only its masked layers get scores.
    method: "magnitude" (reference: 1 / 0.99, so the first mask is the layer-wise
      magnitude mask; with an N:M plan, the N:M magnitude mask), "magnitude_abs"
      (|w| / max |w| per layer), "kaiming" (Kaiming-uniform scores ranked signed, as the
      lottery-jackpots code's random init),
      "edge_popup" (the same scores ranked by |score|, as Ramanujan et al.'s
      allenai/hidden-networks) or "random" (U(0, 1)).
    rng: PRNG key for the random initialisations.
    fan_ins: {module path: fan-in} for kernels whose fan-in their shape does not give
      (`kernel_fan_ins`: DenseGeneral); any other kernel's is the product of all its axes
      but the last, right for Conv, Dense and Einsum kernels.
  """
  if method not in SCORE_INITS:
    raise ValueError(f"unknown search.score_init {method!r}; choose one of {SCORE_INITS}")
  flat_params = traverse_util.flatten_dict(params)
  kernels = [jnp.asarray(flat_params[layer.path + ("kernel",)]) for layer in plan.masked_layers]
  # One compiled program for all layers: op by op, every layer shape compiles its own.
  scores = jax.jit(functools.partial(_layer_scores, plan=plan, method=method,
                                     fan_ins=dict(fan_ins or {})))(kernels, rng)
  return traverse_util.unflatten_dict(
      {layer.path + ("kernel",): score for layer, score in zip(plan.masked_layers, scores)})


def _layer_scores(kernels: list, rng: jax.Array, *, plan: SparsityPlan, method: str,
                  fan_ins: Mapping[tuple[str, ...], int]) -> list:
  """The initial scores of each masked layer's kernel, in `plan.masked_layers` order."""
  scores = []
  for index, (layer, weight) in enumerate(zip(plan.masked_layers, kernels)):
    layer_rng = jax.random.fold_in(rng, index)
    if method == "magnitude" and plan.pattern is not None:
      scores.append(_magnitude_pattern(weight, plan.pattern))
    elif method == "magnitude":
      scores.append(_magnitude(weight, plan.prune_counts[layer.name]))
    elif method == "magnitude_abs":
      scores.append(_magnitude_abs(weight))
    elif method in FAN_IN_INITS:
      fan_in = fan_ins.get(layer.path, math.prod(weight.shape[:-1]))
      scores.append(_kaiming(weight, layer_rng, fan_in))
    else:
      scores.append(jax.random.uniform(layer_rng, weight.shape, jnp.float32))
  return scores
