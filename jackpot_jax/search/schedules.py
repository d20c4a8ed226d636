"""Schedules of the search's mask over its steps: a sparsity ramp (keep counts that anneal
to the plan's) and a flip cap (at most so many weights swapped per layer and step).

Both are functions of the step number inside the jitted step, so a search compiles once
and resumes from a checkpoint's step. Both compute in float32 with the same correctly
rounded operations as their host mirrors (`*_at`), which tests use, so the two agree.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jackpot_jax.search.masking import NMPattern, parse_pattern


def _not_folded(divisor: int) -> jax.Array:
  """`divisor` as a float32 the compiler cannot see as a constant: XLA rewrites x / c into
  x * (1 / c), which rounds differently (5 * fl(1/5) > 1 by an ulp turned a cap of 12
  into 13), so the host mirrors would no longer agree."""
  return lax.optimization_barrier(jnp.float32(divisor))


@dataclasses.dataclass(frozen=True)
class KeepRamp:
  """Gradual pruning (Zhu & Gupta 2017): each layer's keep count anneals cubically,
  k_t = k_end + floor((k_start - k_end) * (1 - t / steps)^3), from `start` at step 0 to
  `end` at step `steps`, and stays at `end` after it.

  Attributes:
    start, end: keep counts, one per masked layer in the keep-count tree's leaf order.
    steps: the ramp's length in steps, >= 1.
  """

  start: tuple[int, ...]
  end: tuple[int, ...]
  steps: int

  def counts(self, step: jax.Array) -> jax.Array:
    """The keep counts (int32, one per layer) of the mask the forward pass of `step` uses."""
    t = jnp.minimum(jnp.asarray(step, jnp.int32), self.steps).astype(jnp.float32)
    fraction = (jnp.float32(self.steps) - t) / _not_folded(self.steps)
    cube = fraction * fraction * fraction
    start, end = jnp.asarray(self.start, jnp.int32), jnp.asarray(self.end, jnp.int32)
    return end + jnp.floor((start - end).astype(jnp.float32) * cube).astype(jnp.int32)

  def counts_at(self, step: int) -> np.ndarray:
    """`counts` on the host (the same float32 operations)."""
    t = np.float32(min(step, self.steps))
    fraction = (np.float32(self.steps) - t) / np.float32(self.steps)
    cube = fraction * fraction * fraction
    start, end = np.asarray(self.start, np.int32), np.asarray(self.end, np.int32)
    return end + np.floor((start - end).astype(np.float32) * cube).astype(np.int32)


def ramp_start_prune_count(prune_count: int, start_sparsity: float, sparsity: float) -> int:
  """A layer's prune count at a ramp's start: its planned count scaled by
  start_sparsity / sparsity (rounded down), so every layer keeps its share of the plan."""
  return int(math.floor(prune_count * start_sparsity / sparsity))


def keep_ramp(keep_counts: Any, sizes: Any, *, start_sparsity: float, sparsity: float,
              ramp_fraction: float, total_steps: int) -> KeepRamp | None:
  """The ramp search.sparsity_ramp asks for over a plan's keep counts, or None (off).

  Args:
    keep_counts: the plan's keep-count tree (ints; an N:M pattern has no ramp).
    sizes: a tree of the same structure holding each layer's weight count.
    start_sparsity, sparsity: search.start_sparsity and the plan's target.
    ramp_fraction: search.sparsity_ramp, the fraction of `total_steps` the ramp spans.
  """
  if ramp_fraction <= 0:
    return None
  ends = jax.tree.leaves(keep_counts)
  if any(isinstance(k, NMPattern) for k in ends):
    raise ValueError("search.sparsity_ramp anneals top-k keep counts; an N:M pattern has "
                     "none: set search.sparsity_ramp=0 or search.pattern=unstructured")
  starts = tuple(n - ramp_start_prune_count(n - k, start_sparsity, sparsity)
                 for n, k in zip(jax.tree.leaves(sizes), ends))
  return KeepRamp(start=starts, end=tuple(int(k) for k in ends),
                  steps=max(int(round(ramp_fraction * total_steps)), 1))


@dataclasses.dataclass(frozen=True)
class FlipCap:
  """The authors' "short restriction" with a cap that decays: at step t of `total_steps`,
  at most ceil(`max_flips` * (1 - t / total_steps)^4) weights swap in (and as many out)
  per layer. Their code applies ceil((1 - e / N)^4) per epoch e of N, a rate in (0, 1]
  whose ceiling is 1 at every epoch, so it never restricts; the quartic decay is kept, but
  as a factor of `max_flips` and per step, so the cap falls smoothly from `max_flips` at
  the first step to 1 at the last (never 0: the mask can always still move)."""

  max_flips: int
  total_steps: int

  def cap(self, step: jax.Array) -> jax.Array:
    """The cap (int32) on the swaps of the update at `step` (0-based)."""
    t = jnp.minimum(jnp.asarray(step, jnp.int32), self.total_steps).astype(jnp.float32)
    fraction = (jnp.float32(self.total_steps) - t) / _not_folded(self.total_steps)
    square = fraction * fraction
    return jnp.ceil(jnp.float32(self.max_flips) * (square * square)).astype(jnp.int32)

  def cap_at(self, step: int) -> int:
    """`cap` on the host (the same float32 operations)."""
    t = np.float32(min(step, self.total_steps))
    fraction = (np.float32(self.total_steps) - t) / np.float32(self.total_steps)
    square = fraction * fraction
    return int(np.ceil(np.float32(self.max_flips) * (square * square)))


def flip_cap(max_flips: int, total_steps: int) -> FlipCap | None:
  """The cap search.max_flips_per_step asks for, or None (0: off)."""
  return FlipCap(int(max_flips), max(int(total_steps), 1)) if max_flips else None


def _is_number(value: Any) -> bool:
  return not isinstance(value, bool) and isinstance(value, (int, float))


def check_levers(search: Any, *, ramp_allowed: bool = True,
                 why_no_ramp: str = "") -> None:
  """Raises ValueError (one line) for bad search.sparsity_ramp, search.start_sparsity,
  search.max_flips_per_step or search.flips_per_layer values.

  Args:
    ramp_allowed: False where the search has no ramp (`why_no_ramp` says why).
  """
  ramp, start = search.sparsity_ramp, search.start_sparsity
  if not _is_number(ramp) or not 0.0 <= ramp <= 1.0:
    raise ValueError(f"search.sparsity_ramp must be a fraction of the search in [0, 1] "
                     f"(0: off), got {ramp!r}")
  if not _is_number(start):
    raise ValueError(f"search.start_sparsity must be a number, got {start!r}")
  if not ramp_allowed and (ramp != 0 or start != 0):
    field, value = ("sparsity_ramp", ramp) if ramp != 0 else ("start_sparsity", start)
    raise ValueError(f"search.{field}={value}: {why_no_ramp}; leave it at 0")
  if ramp == 0 and start != 0:
    raise ValueError(f"search.start_sparsity={start} is the start of a sparsity ramp; set "
                     "search.sparsity_ramp > 0 or leave search.start_sparsity at 0")
  pattern = parse_pattern(search.pattern)
  if ramp > 0:
    if pattern is not None:
      raise ValueError(f"search.sparsity_ramp anneals top-k keep counts; search.pattern="
                       f"{pattern} has none: set search.sparsity_ramp=0 or "
                       "search.pattern=unstructured")
    if not 0.0 <= start < search.sparsity:
      raise ValueError(f"search.start_sparsity must be in [0, search.sparsity="
                       f"{search.sparsity}) for the ramp to prune towards it, got {start}")
  flips = search.max_flips_per_step
  if isinstance(flips, bool) or not isinstance(flips, int) or flips < 0:
    raise ValueError(f"search.max_flips_per_step must be a whole number >= 0 (0: off), "
                     f"got {flips!r}")
  if flips and pattern is not None:
    raise ValueError(f"search.max_flips_per_step caps top-k swaps; search.pattern={pattern} "
                     "selects within groups: set search.max_flips_per_step=0 or "
                     "search.pattern=unstructured")
  if not isinstance(search.flips_per_layer, bool):
    raise ValueError(f"search.flips_per_layer must be True or False, got "
                     f"{search.flips_per_layer!r}")
