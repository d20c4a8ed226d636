"""Exact top-k and N:M masks, and the straight-through estimator that trains scores
through them."""

from __future__ import annotations

import dataclasses
import math
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

PyTree = Any


def topk_mask(scores: jax.Array, keep_count: int) -> jax.Array:
  """Boolean mask with exactly `keep_count` True entries at the largest scores.

  `lax.top_k` orders equal values by ascending index, so ties are broken towards the
  lower flat index: the count is exact and deterministic even when every score ties,
  which happens at the first step with the reference `magnitude` initialisation.

  Args:
    scores: any-shaped float array.
    keep_count: static number of entries to keep, 0 <= keep_count <= scores.size.

  Returns:
    A bool array of `scores.shape`.
  """
  size = scores.size
  if not 0 <= keep_count <= size:
    raise ValueError(f"keep_count {keep_count} is outside [0, {size}]")
  if keep_count == size:
    return jnp.ones(scores.shape, bool)
  if keep_count == 0:
    return jnp.zeros(scores.shape, bool)
  flat = scores.reshape(-1)
  _, kept = lax.top_k(flat, keep_count)
  return jnp.zeros(size, bool).at[kept].set(True).reshape(scores.shape)


UNSTRUCTURED = "unstructured"


@dataclasses.dataclass(frozen=True)
class NMPattern:
  """Keep the `n` largest of every `m` consecutive weights along a kernel's reduction
  dimension, in the order PyTorch flattens the weight: `[out, in]` for a linear layer,
  `[out, in*kh*kw]` for a convolution (the layout 2:4 sparse tensor cores consume)."""

  n: int
  m: int

  def __str__(self) -> str:
    return f"{self.n}:{self.m}"

  @property
  def density(self) -> float:
    return self.n / self.m

  def fits(self, shape: tuple[int, ...]) -> bool:
    """Whether a Flax kernel of `shape` splits into whole groups along its reduction."""
    return math.prod(shape[:-1]) % self.m == 0


def parse_pattern(text: str) -> NMPattern | None:
  """`search.pattern`: "unstructured" (None) or "N:M" with 0 < N < M."""
  if text == UNSTRUCTURED:
    return None
  parts = str(text).split(":")
  if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
    n, m = (int(p) for p in parts)
    if 0 < n < m:
      return NMPattern(n, m)
  raise ValueError(f"search.pattern must be {UNSTRUCTURED!r} or N:M with 0 < N < M "
                   f"(e.g. 2:4), got {text!r}")


def _torch_order(kernel: jax.Array) -> jax.Array:
  """A Flax kernel ((kh, kw,) in, out) as PyTorch's (out, in(, kh, kw)) weight."""
  ndim = kernel.ndim
  return jnp.transpose(kernel, (ndim - 1, ndim - 2, *range(ndim - 2)))


def _flax_order(weight: jax.Array) -> jax.Array:
  """The inverse of `_torch_order`."""
  ndim = weight.ndim
  return jnp.transpose(weight, (*range(2, ndim), 1, 0))


def torch_groups(kernel: jax.Array, m: int) -> jax.Array:
  """(out, in*kh*kw // m, m): each row's consecutive groups of `m`, as PyTorch flattens."""
  weight = _torch_order(kernel)
  return weight.reshape(weight.shape[0], -1, m)


def nm_mask(scores: jax.Array, pattern: NMPattern) -> jax.Array:
  """Boolean mask keeping exactly the `pattern.n` largest scores of every group.

  `lax.top_k` breaks ties towards the lower index inside a group, so every group keeps
  exactly n even when all its scores tie (the first step of magnitude initialisation).
  """
  if not pattern.fits(scores.shape):
    raise ValueError(f"a kernel of shape {scores.shape} has no whole groups of {pattern.m} "
                     "along its reduction dimension")
  groups = torch_groups(scores, pattern.m)
  _, kept = lax.top_k(groups, pattern.n)
  grouped = jnp.any(kept[..., None] == jnp.arange(pattern.m), axis=-2)
  torch_shape = _torch_order(scores).shape
  return _flax_order(grouped.reshape(torch_shape))


def select_mask(ranking: jax.Array, rule: int | NMPattern) -> jax.Array:
  """The mask a layer's rule keeps: a static keep count (top-k) or an N:M pattern."""
  if isinstance(rule, NMPattern):
    return nm_mask(ranking, rule)
  return topk_mask(ranking, rule)


def nm_group_counts(mask: jax.Array, m: int) -> jax.Array:
  """Kept entries of every group of `m` (PyTorch order), for checking a pattern."""
  return jnp.sum(torch_groups(jnp.asarray(mask), m), axis=-1)


def ranking_values(scores: PyTree, by_magnitude: bool) -> PyTree:
  """What the top-k ranks: the scores, or their absolute values (edge-popup's |S|)."""
  return jax.tree.map(jnp.abs, scores) if by_magnitude else scores


def compute_masks(scores: PyTree, keep_counts: PyTree, by_magnitude: bool = False) -> PyTree:
  """Applies `select_mask` leaf by leaf.

  Args:
    keep_counts: mirrors `scores`; each leaf a static keep count (Python int, top-k of the
      layer) or an `NMPattern` (top-n of every group of m).
    by_magnitude: rank |score| (edge-popup) instead of the signed score (the reference).
  """
  return jax.tree.map(select_mask, ranking_values(scores, by_magnitude), keep_counts)


@jax.custom_vjp
def straight_through(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Returns `mask` as a float array whose gradient flows to `scores` unchanged.

  The forward value is exactly the binary mask (no `s + stop_gradient(m - s)` rounding),
  so a masked layer computes with W * M bit for bit; the backward pass treats the mask
  as the identity of the score: dL/dS = dL/dM.
  """
  return mask.astype(scores.dtype)


def _straight_through_fwd(scores, mask):
  return mask.astype(scores.dtype), None


def _straight_through_bwd(_, cotangent):
  return cotangent, None


straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def count_flips(old_masks: PyTree, new_masks: PyTree) -> jax.Array:
  """Number of mask entries that changed, summed over all layers."""
  flips = jax.tree.map(lambda a, b: jnp.sum(a != b, dtype=jnp.int32), old_masks, new_masks)
  return sum(jax.tree.leaves(flips), jnp.int32(0))
