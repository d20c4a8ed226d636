"""Exact top-k masks and the straight-through estimator that trains scores through them."""

from __future__ import annotations

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


def ranking_values(scores: PyTree, by_magnitude: bool) -> PyTree:
  """What the top-k ranks: the scores, or their absolute values (edge-popup's |S|)."""
  return jax.tree.map(jnp.abs, scores) if by_magnitude else scores


def compute_masks(scores: PyTree, keep_counts: PyTree, by_magnitude: bool = False) -> PyTree:
  """Applies `topk_mask` leaf by leaf; `keep_counts` mirrors `scores` with Python ints.

  Args:
    by_magnitude: rank |score| (edge-popup) instead of the signed score (the reference).
  """
  return jax.tree.map(topk_mask, ranking_values(scores, by_magnitude), keep_counts)


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
