"""Score initialisations: one trainable score per weight of every masked layer.

Each initialisation is one function registered by name with `register_init`;
search.score_init picks it.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jackpot_jax.bounded_cache import BoundedCache
from jackpot_jax.search import masking
from jackpot_jax.registry import Registry
from jackpot_jax.search.sparsity import PrunableLayer, SparsityPlan


@dataclasses.dataclass(frozen=True)
class InitContext:
  """What a score initialisation may read about the layer it scores.

  Attributes:
    layer: the masked layer.
    plan: the sparsity plan (its prune counts, its N:M pattern if any).
    rng: this layer's PRNG key (the run's key folded with the layer's index).
    fan_in: the kernel's fan-in (`kernel_fan_ins` where its shape does not say).
  """

  layer: PrunableLayer
  plan: SparsityPlan
  rng: jax.Array
  fan_in: int

  @property
  def prune_count(self) -> int:
    return self.plan.prune_counts[self.layer.name]


@dataclasses.dataclass(frozen=True)
class ScoreInit:
  """A registered score initialisation.

  Attributes:
    init: `init(weight, context: InitContext) -> float32 scores of weight's shape`; traced
      once under jit for all layers, so it must be jax-traceable.
    ranks_by_magnitude: the search keeps the largest |score| (edge-popup), not the largest
      signed score.
    needs_fan_in: `init` reads `context.fan_in`; a DenseGeneral kernel's is then read off an
      abstract call of the model (`kernel_fan_ins`), which other inits skip.
  """

  init: Callable[[jax.Array, InitContext], jax.Array]
  ranks_by_magnitude: bool = False
  needs_fan_in: bool = False


SCORE_INIT_REGISTRY: Registry[ScoreInit] = Registry("search.score_init")


def register_init(name: str, *, ranks_by_magnitude: bool = False, needs_fan_in: bool = False
                  ) -> Callable[[Callable], Callable]:
  """Decorator registering `init(weight, context: InitContext) -> scores` as
  search.score_init=`name` (see `ScoreInit` for the options); returns `init` unchanged, so
  one function may be registered under several names."""
  def register(init: Callable) -> Callable:
    SCORE_INIT_REGISTRY.register(name, ScoreInit(init, ranks_by_magnitude, needs_fan_in))
    return init
  return register


def score_init_names() -> tuple[str, ...]:
  """Every registered search.score_init, in registration order."""
  return SCORE_INIT_REGISTRY.names()


def ranks_by_magnitude(method: str) -> bool:
  """Whether the search with this init keeps the largest |score| (edge-popup)."""
  return SCORE_INIT_REGISTRY.get(method).ranks_by_magnitude


def needs_fan_ins(method: str) -> bool:
  """Whether this init reads kernel fan-ins, which `kernel_fan_ins` must then compute."""
  return SCORE_INIT_REGISTRY.get(method).needs_fan_in


def __getattr__(name: str) -> Any:
  # SCORE_INITS was a constant; derived on each read, it includes later registrations.
  if name == "SCORE_INITS":
    return score_init_names()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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


# With a sparsity ramp, the magnitude init's score of the weights the ramp's start keeps
# beyond the plan's mask: between kept and pruned, so the first mask is the layer's
# magnitude mask at the ramp's start, and the plan's magnitude mask still ranks first.
MAGNITUDE_RAMPED = 0.995


def ramp_start_scores(params: Mapping[str, Any], plan: SparsityPlan, scores: Mapping[str, Any],
                      start_prune_counts: Mapping[str, int]) -> dict:
  """Magnitude scores (`init_scores(..., "magnitude")`) regraded for a sparsity ramp:
  `MAGNITUDE_RAMPED` on the pruned weights a layer keeps at the ramp's start
  ({layer name: prune count}), the rest unchanged."""
  flat_params, flat_scores = traverse_util.flatten_dict(params), traverse_util.flatten_dict(scores)
  keys = [layer.path + ("kernel",) for layer in plan.masked_layers]

  def regrade(kernels, layer_scores):
    regraded = []
    for layer, weight, score in zip(plan.masked_layers, kernels, layer_scores):
      start_kept = _magnitude(weight, start_prune_counts[layer.name]) == MAGNITUDE_KEPT
      regraded.append(jnp.where((score != MAGNITUDE_KEPT) & start_kept, MAGNITUDE_RAMPED,
                                score).astype(jnp.float32))
    return regraded

  regraded = jax.jit(regrade)([jnp.asarray(flat_params[k]) for k in keys],
                              [flat_scores[k] for k in keys])
  return traverse_util.unflatten_dict(dict(zip(keys, regraded)))


@register_init("magnitude")
def _magnitude_init(weight: jax.Array, context: InitContext) -> jax.Array:
  """The reference: 1 / 0.99, so the first mask is the layer-wise magnitude mask (with an
  N:M plan, the N:M magnitude mask)."""
  if context.plan.pattern is not None:
    return _magnitude_pattern(weight, context.plan.pattern)
  return _magnitude(weight, context.prune_count)


@register_init("magnitude_abs")
def _magnitude_abs(weight: jax.Array, context: InitContext) -> jax.Array:
  """|w| / max |w| per layer."""
  del context
  magnitude = jnp.abs(weight).astype(jnp.float32)
  return magnitude / jnp.maximum(jnp.max(magnitude), jnp.finfo(jnp.float32).tiny)


# Ranked signed, as the lottery-jackpots code's random init; ranked by |score|, as
# Ramanujan et al.'s allenai/hidden-networks (edge-popup).
@register_init("edge_popup", ranks_by_magnitude=True, needs_fan_in=True)
@register_init("kaiming", needs_fan_in=True)
def _kaiming(weight: jax.Array, context: InitContext) -> jax.Array:
  """Edge-popup's scores, kaiming_uniform(a=sqrt(5)): U(-1/sqrt(fan_in), 1/sqrt(fan_in))."""
  bound = 1.0 / math.sqrt(context.fan_in)
  return jax.random.uniform(context.rng, weight.shape, jnp.float32, -bound, bound)


@register_init("random")
def _uniform(weight: jax.Array, context: InitContext) -> jax.Array:
  """U(0, 1)."""
  return jax.random.uniform(context.rng, weight.shape, jnp.float32)


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
    method: a registered init (`score_init_names`): "magnitude" (the reference),
      "magnitude_abs", "kaiming", "edge_popup" or "random" unless more are registered.
    rng: PRNG key for the random initialisations.
    fan_ins: {module path: fan-in} for kernels whose fan-in their shape does not give
      (`kernel_fan_ins`: DenseGeneral); any other kernel's is the product of all its axes
      but the last, right for Conv, Dense and Einsum kernels.
  """
  init = SCORE_INIT_REGISTRY.get(method).init
  flat_params = traverse_util.flatten_dict(params)
  kernels = [jnp.asarray(flat_params[layer.path + ("kernel",)]) for layer in plan.masked_layers]
  # One compiled program for all layers: op by op, every layer shape compiles its own.
  fan_ins = dict(fan_ins or {})

  def build():
    return jax.jit(functools.partial(_layer_scores, plan=plan, init=init, fan_ins=fan_ins))

  program = _init_programs.get((init, _plan_key(plan), tuple(sorted(fan_ins.items()))), build)
  scores = program(kernels, rng)
  return traverse_util.unflatten_dict(
      {layer.path + ("kernel",): score for layer, score in zip(plan.masked_layers, scores)})


def _plan_key(plan: SparsityPlan) -> tuple:
  """A hashable key equal for equal plans (every field, the prune counts as items)."""
  return tuple((field.name, tuple(sorted(value.items())) if isinstance(value, Mapping)
                else value)
               for field in dataclasses.fields(plan)
               for value in [getattr(plan, field.name)])


# `init_scores`' programs by init function, plan and fan-ins: the magnitude baseline and the
# search's first state, and a sweep's or a test session's later runs, trace each once.
_init_programs = BoundedCache(16)


def _layer_scores(kernels: list, rng: jax.Array, *, plan: SparsityPlan, init: Callable,
                  fan_ins: Mapping[tuple[str, ...], int]) -> list:
  """The initial scores of each masked layer's kernel, in `plan.masked_layers` order."""
  return [init(weight, InitContext(layer=layer, plan=plan, rng=jax.random.fold_in(rng, index),
                                   fan_in=fan_ins.get(layer.path, math.prod(weight.shape[:-1]))))
          for index, (layer, weight) in enumerate(zip(plan.masked_layers, kernels))]
