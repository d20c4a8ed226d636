"""One layer's mask by a saliency, without changing its weights: magnitude and Wanda.

A layer's `sparsity` is a float, the fraction pruned (`int(sparsity * n)` of each comparison
group of n weights, the count the search's plans use), or an `NMPattern`: keep the n most
salient of every m consecutive input channels of each output (`masking.nm_mask`'s groups,
along axis 0 of a Flax (in, out) kernel). The comparison groups are the papers':
magnitude ranks |W| over the whole layer (the magnitude baseline of Sun et al. 2023,
`prune_magnitude` in their code); Wanda ranks |W_ij| * ||X_j||_2 among each output's
weights, a column of the Flax kernel (a row of PyTorch's (out, in) weight).
"""

from __future__ import annotations

from typing import Union

import jax
import jax.numpy as jnp
from jax import lax

from jackpot_jax.search import masking
from jackpot_jax.search.masking import NMPattern

Sparsity = Union[float, NMPattern]


def check_sparsity(sparsity: Sparsity) -> None:
  """A fraction in [0, 1) or an `NMPattern`; anything else is a one-line error."""
  if isinstance(sparsity, NMPattern):
    return
  if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (
      0.0 <= sparsity < 1.0):
    raise ValueError(f"sparsity must be a fraction in [0, 1) or an NMPattern (e.g. "
                     f"NMPattern(2, 4)), got {sparsity!r}")


def pruned_count(size: int, sparsity: float) -> int:
  """How many of `size` weights a fraction `sparsity` prunes."""
  return int(sparsity * size)


def per_output_mask(scores: jax.Array, keep_count: int) -> jax.Array:
  """Keeps the `keep_count` largest scores of each output (each column of an (in, out)
  kernel's scores); ties go to the lower input channel, as `lax.top_k` orders them."""
  by_output = scores.T
  _, kept = lax.top_k(by_output, keep_count)
  rows = jnp.arange(by_output.shape[0])[:, None]
  return jnp.zeros(by_output.shape, bool).at[rows, kept].set(True).T


def magnitude_mask(kernel: jax.Array, sparsity: Sparsity) -> jax.Array:
  """Keeps the largest |W| of the layer, or of every group of m input channels."""
  scores = jnp.abs(kernel.astype(jnp.float32))
  if isinstance(sparsity, NMPattern):
    return masking.nm_mask(scores, sparsity)
  return masking.topk_mask(scores, scores.size - pruned_count(scores.size, sparsity))


def input_square_sums(inputs: jax.Array) -> jax.Array:
  """Sum of squares of each input channel (the last axis) over every token of a batch:
  summed over the calibration batches, its square root is Wanda's ||X_j||_2."""
  flat = inputs.reshape(-1, inputs.shape[-1]).astype(jnp.float32)
  return jnp.sum(jnp.square(flat), axis=0)


def wanda_scores(kernel: jax.Array, input_norms: jax.Array) -> jax.Array:
  """|W_ij| * ||X_j||_2: each weight times the norm of the input channel it multiplies.

  Args:
    kernel: (in, out).
    input_norms: (in,), each input channel's l2 norm over the calibration tokens.
  """
  return jnp.abs(kernel.astype(jnp.float32)) * input_norms.astype(jnp.float32)[:, None]


def wanda_mask(kernel: jax.Array, input_norms: jax.Array, sparsity: Sparsity) -> jax.Array:
  """Wanda's mask (Sun et al. 2023): the most salient weights of each output, or of each
  output's groups of m input channels."""
  scores = wanda_scores(kernel, input_norms)
  if isinstance(sparsity, NMPattern):
    return masking.nm_mask(scores, sparsity)
  inputs = scores.shape[0]
  return per_output_mask(scores, inputs - pruned_count(inputs, sparsity))
