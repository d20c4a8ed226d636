"""SparseGPT (Frantar & Alistarh 2023) on one layer: a mask and the weights that compensate it.

The layer's weights are processed as the published algorithm (`fasterprune`) does, with
the rows of PyTorch's (out, in) weight as outputs and its columns as inputs (the Flax
kernel transposed): the inverse Hessian's upper Cholesky factor U ((H + damping)^-1 =
U^T U, damping 1% of H's mean diagonal; input channels no calibration token reached get
H_jj = 1 and weight 0), then blocks of `blocksize` columns from the first. In a block:
  - unstructured: the mask prunes the `int(sparsity * rows * width)` lowest
    w^2 / U_jj^2 of the whole block, chosen once from its weights as earlier blocks left
    them (the reference's `<=` threshold prunes one more, and every tie);
  - N:M: at the first column of each group of m, each row keeps the n highest
    w^2 / U_jj^2 of the group's current weights;
then column by column the pruned weights are zeroed and the error (w - q) / U_jj is spread
over the block's later columns along U's row; after the block, over every later column.
U_jj stands where the paper writes [H^-1]_jj, as in the reference code.
Everything is float32 with full-precision matmuls (no TF32).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.scipy.linalg import solve_triangular

from jackpot_jax.baselines.layer_masks import Sparsity, check_sparsity, pruned_count
from jackpot_jax.search import masking
from jackpot_jax.search.masking import NMPattern

BLOCKSIZE = 128
DAMPING = 0.01
_HIGHEST = lax.Precision.HIGHEST


def input_products(inputs: jax.Array) -> jax.Array:
  """X^T X (in, in) of a batch's inputs (the last axis is the input channel) over every
  token: summed over the calibration batches, what `hessian` scales."""
  flat = inputs.reshape(-1, inputs.shape[-1]).astype(jnp.float32)
  return jnp.matmul(flat.T, flat, precision=_HIGHEST)


def hessian(inputs_products: jax.Array, num_sequences: int) -> jax.Array:
  """H = 2 X^T X / (calibration sequences), as the reference accumulates it (the scale
  changes no choice: the damping is relative and the updates are ratios)."""
  return 2.0 * inputs_products / num_sequences


def inverse_hessian_factor(hessian_matrix: jax.Array, damping: float = DAMPING) -> jax.Array:
  """Upper-triangular U with U^T U = (H + damping * mean(diag H) * I)^-1.

  The reference factors the inverse (Cholesky, inverse, Cholesky again); the same U is
  R^-1 for the upper-triangular R with R R^T = the damped H, which is the lower Cholesky
  factor of that matrix with rows and columns reversed, reversed back: one factorisation
  and one triangular solve.
  """
  size = hessian_matrix.shape[0]
  identity = jnp.eye(size, dtype=jnp.float32)
  damped = hessian_matrix + damping * jnp.mean(jnp.diagonal(hessian_matrix)) * identity
  upper = jnp.linalg.cholesky(damped[::-1, ::-1])[::-1, ::-1]
  return jnp.triu(solve_triangular(upper, identity, lower=False))


def _group_keep(saliency: jax.Array, keep: int) -> jax.Array:
  """Keeps the `keep` highest of each row of (rows, m); ties to the lower column."""
  _, kept = lax.top_k(saliency, keep)
  return jnp.any(kept[..., None] == jnp.arange(saliency.shape[-1]), axis=-2)


def _prune_block(state: tuple[jax.Array, jax.Array], factor: jax.Array, start, width: int,
                 sparsity: Sparsity) -> tuple[jax.Array, jax.Array]:
  """Prunes columns [start, start + width) of the (rows, in) weights and updates the later
  columns; `state` is (weights, pruned) and so is the result."""
  weights, pruned = state
  rows = weights.shape[0]
  block = lax.dynamic_slice_in_dim(weights, start, width, axis=1)
  block_factor = lax.dynamic_slice(factor, (start, start), (width, width))
  diagonal = jnp.diagonal(block_factor)
  if isinstance(sparsity, NMPattern):
    group = sparsity.m
    block_pruned = jnp.zeros((rows, width), bool)
  else:
    group = 1
    saliency = jnp.square(block) / jnp.square(diagonal)[None, :]
    keep = rows * width - pruned_count(rows * width, sparsity)
    block_pruned = ~masking.topk_mask(saliency, keep, method="top_k")

  def prune_group(index, carry):
    block, final, errors, block_pruned = carry
    first = index * group
    if isinstance(sparsity, NMPattern):
      columns = lax.dynamic_slice_in_dim(block, first, group, axis=1)
      scale = lax.dynamic_slice_in_dim(diagonal, first, group)
      kept = _group_keep(jnp.square(columns) / jnp.square(scale)[None, :], sparsity.n)
      block_pruned = lax.dynamic_update_slice_in_dim(block_pruned, ~kept, first, axis=1)
    for offset in range(group):
      column = first + offset
      w = lax.dynamic_index_in_dim(block, column, axis=1, keepdims=False)
      factor_row = lax.dynamic_index_in_dim(block_factor, column, axis=0, keepdims=False)
      prune = lax.dynamic_index_in_dim(block_pruned, column, axis=1, keepdims=False)
      q = jnp.where(prune, 0.0, w)
      error = (w - q) / factor_row[column]
      # U is upper triangular: the earlier columns of its row are zeros.
      block = block - error[:, None] * factor_row[None, :]
      final = lax.dynamic_update_index_in_dim(final, q, column, axis=1)
      errors = lax.dynamic_update_index_in_dim(errors, error, column, axis=1)
    return block, final, errors, block_pruned

  zeros = jnp.zeros_like(block)
  _, final, errors, block_pruned = lax.fori_loop(
      0, width // group, prune_group, (block, zeros, zeros, block_pruned))
  # Columns before the block meet U's zeros; the block's own are overwritten below.
  factor_rows = lax.dynamic_slice_in_dim(factor, start, width, axis=0)
  weights = weights - jnp.matmul(errors, factor_rows, precision=_HIGHEST)
  weights = lax.dynamic_update_slice_in_dim(weights, final, start, axis=1)
  pruned = lax.dynamic_update_slice_in_dim(pruned, block_pruned, start, axis=1)
  return weights, pruned


@functools.partial(jax.jit, static_argnames=("sparsity", "blocksize", "damping"))
def sparsegpt_prune(kernel: jax.Array, hessian_matrix: jax.Array, sparsity: Sparsity, *,
                    blocksize: int = BLOCKSIZE, damping: float = DAMPING
                    ) -> tuple[jax.Array, jax.Array]:
  """SparseGPT on one layer.

  Args:
    kernel: the Flax (in, out) kernel, any float dtype.
    hessian_matrix: (in, in), `hessian` of the layer's calibration inputs.
    sparsity: the fraction pruned of each block of columns, or an `NMPattern`
      (`blocksize` must be a multiple of m where the layer has more inputs than it).
    blocksize: columns (input channels) per block; a last, narrower block takes the rest.
    damping: added to H's diagonal, relative to its mean.

  Returns:
    (mask, kernel): bool (in, out), True where kept, and the updated float32 (in, out)
    kernel, 0 wherever the mask prunes.
  """
  check_sparsity(sparsity)
  if kernel.ndim != 2 or hessian_matrix.shape != (kernel.shape[0],) * 2:
    raise ValueError(f"SparseGPT takes an (in, out) kernel and an (in, in) Hessian, got "
                     f"{kernel.shape} and {hessian_matrix.shape}")
  columns = kernel.shape[0]
  width = min(blocksize, columns)
  if isinstance(sparsity, NMPattern) and (columns % sparsity.m or width % sparsity.m):
    raise ValueError(f"{sparsity} groups need {columns} inputs and the blocksize {blocksize} "
                     f"to be multiples of {sparsity.m}")
  hessian_matrix = hessian_matrix.astype(jnp.float32)
  dead = jnp.diagonal(hessian_matrix) == 0
  hessian_matrix = hessian_matrix + jnp.diag(dead.astype(jnp.float32))
  weights = jnp.where(dead[None, :], 0.0, kernel.astype(jnp.float32).T)
  factor = inverse_hessian_factor(hessian_matrix, damping)
  state = (weights, jnp.zeros(weights.shape, bool))
  full_blocks, rest = divmod(columns, width)
  state = lax.fori_loop(
      0, full_blocks,
      lambda index, state: _prune_block(state, factor, index * width, width, sparsity), state)
  if rest:
    state = _prune_block(state, factor, full_blocks * width, rest, sparsity)
  weights, pruned = state
  return ~pruned.T, weights.T
