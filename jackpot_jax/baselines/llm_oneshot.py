"""One-shot pruning baselines for decoder language models, chosen by name: magnitude, Wanda
and SparseGPT over the same frozen weights the search masks.

  model, params, hf_config = import_hf_decoder("Llama-3.2-1B")
  pruned = prune_decoder("sparsegpt", model, params, hf_config, tokens, 0.5)
  logits = model.apply({"params": pruned.params, "masks": pruned.masks}, token_ids)

The masks cover the projections `decoder_spec(hf_config).maskable` selects (bool, True
where kept, the tree the search's masks have); embeddings, norms, biases and the LM head
are never masked. `magnitude` and `wanda` return the params unchanged; `sparsegpt` returns
them with its updated projection kernels (in their dtype, 0 where pruned).

Wanda and SparseGPT prune block by block, in the order of both papers' reference code
(`prune_wanda`, `llama_sequential`):
  1. the calibration sequences are embedded once: the first block's inputs;
  2. for each block in turn, every batch passes through the block with its weights as they
     came, and each projection's statistic of its inputs accumulates (Wanda: sum x_j^2 per
     input channel; SparseGPT: X^T X). All of a block's inputs come from this one dense
     pass, as in the references: o_proj sees the dense attention, the MLP the dense
     attention's residual stream;
  3. each projection is pruned from its statistic alone;
  4. a second pass through the pruned block (W * M, or SparseGPT's updated weights rounded
     to the params' dtype) gives the next block its inputs, so every block is calibrated on
     what the pruned blocks before it produce.
Blocks run in float32 (bfloat16 params are cast up); every calibration token counts (no
padding). Memory: the hidden states of all calibration sequences (float32, n x seq x
hidden, split over the devices; each batch's outputs replace its inputs), one block's
params in float32 and one statistic per tensor the block's projections read (SparseGPT:
in x in float32; q, k and v share one, as do gate and up); projection inputs exist only
inside one batch's compiled pass.
Sharding: every batch is split over all the mesh's devices (its leading axis over every
mesh axis, as the search splits its batches) and the block's params are replicated, so
the statistics are sums XLA all-reduces; the per-layer selection and SparseGPT's solve run
replicated on every device.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from jackpot_jax.baselines import decoder_blocks as blocks_lib
from jackpot_jax.baselines.layer_masks import (Sparsity, check_sparsity, input_square_sums,
                                               magnitude_mask, wanda_mask)
from jackpot_jax.baselines.sparsegpt import hessian, input_products, sparsegpt_prune
from jackpot_jax.models.wrapper import Maskable
from jackpot_jax.pytorch.hf_decoders import decoder_spec
from jackpot_jax.registry import Registry
from jackpot_jax.search.masking import NMPattern

PyTree = Any
Path = tuple[str, ...]


@dataclasses.dataclass(frozen=True, eq=False)
class Calibration:
  """What a baseline reads.

  Attributes:
    model, params: the decoder and its frozen params.
    maskable: `maskable(path, shape)`, the kernels to prune.
    tokens: int32 [n, seq] calibration sequences.
    sparsity: the fraction pruned (float) or an `NMPattern`.
    mesh: the devices each batch is split over.
    batch_size: calibration sequences per pass, a multiple of the mesh's devices.
  """

  model: nn.Module
  params: PyTree
  maskable: Maskable
  tokens: np.ndarray
  sparsity: Sparsity
  mesh: Mesh
  batch_size: int

  def kernels(self) -> dict[Path, jax.Array]:
    """{flattened path: kernel} of every maskable kernel."""
    return {path: leaf for path, leaf in traverse_util.flatten_dict(self.params).items()
            if self.maskable(path, tuple(leaf.shape))}


@dataclasses.dataclass(frozen=True)
class OneShotResult:
  """A baseline's masks (mirroring params, bool per maskable kernel) and the params to use
  them with (the input params unless the baseline updates weights)."""

  masks: PyTree
  params: PyTree


Baseline = Callable[[Calibration], OneShotResult]
LLM_BASELINE_REGISTRY: Registry[Baseline] = Registry("language-model baseline")


def register_llm_baseline(name: str) -> Callable[[Baseline], Baseline]:
  """Decorator registering `baseline(calibration: Calibration) -> OneShotResult` as `name`;
  returns `baseline` unchanged."""
  def register(baseline: Baseline) -> Baseline:
    return LLM_BASELINE_REGISTRY.register(name, baseline)
  return register


def llm_baseline_names() -> tuple[str, ...]:
  """Every registered language-model baseline, in registration order."""
  return LLM_BASELINE_REGISTRY.names()


def prune_decoder(baseline: str, model: nn.Module, params: PyTree,
                  hf_config: Mapping[str, Any], tokens: Any, sparsity: Sparsity, *,
                  mesh: Mesh | None = None, batch_size: int | None = None) -> OneShotResult:
  """Prunes every maskable projection of an imported decoder by a registered baseline.

  Args:
    baseline: a name of `llm_baseline_names()` ("magnitude", "wanda", "sparsegpt").
    model, params, hf_config: what `import_hf_decoder` returns.
    tokens: int [n, seq] calibration sequences (magnitude reads none).
    sparsity: the fraction pruned in [0, 1), or an `NMPattern` such as NMPattern(2, 4).
    mesh: the devices each calibration batch is split over (any mesh, e.g. the search's
      `run.parallel.make_mesh()`); None: every device.
    batch_size: sequences per pass, dividing n and a multiple of the mesh's devices; None:
      one sequence per device.

  Returns:
    The masks and the params to apply them with.
  """
  run = LLM_BASELINE_REGISTRY.get(baseline)
  check_sparsity(sparsity)
  mesh = Mesh(np.asarray(jax.devices()), ("data",)) if mesh is None else mesh
  batch_size = mesh.devices.size if batch_size is None else batch_size
  tokens = np.asarray(tokens)
  if tokens.ndim != 2 or not np.issubdtype(tokens.dtype, np.integer) or not tokens.size:
    raise ValueError(f"calibration tokens must be integers [n, seq], got {tokens.dtype} "
                     f"{tokens.shape}")
  if batch_size < 1 or len(tokens) % batch_size:
    raise ValueError(f"batch_size {batch_size} does not divide the {len(tokens)} calibration "
                     "sequences; choose a divisor")
  if batch_size % mesh.devices.size:
    raise ValueError(f"batch_size {batch_size} is not divisible by the {mesh.devices.size} "
                     "devices of the mesh; choose a multiple of the device count")
  calibration = Calibration(model, params, decoder_spec(hf_config).maskable,
                            tokens.astype(np.int32), sparsity, mesh, batch_size)
  if isinstance(sparsity, NMPattern):
    for path, kernel in calibration.kernels().items():
      if not sparsity.fits(tuple(kernel.shape)):
        raise ValueError(f"{'/'.join(path)} {tuple(kernel.shape)} has no whole groups of "
                         f"{sparsity.m} input channels for {sparsity}")
  return run(calibration)


def _replicated(mesh: Mesh) -> NamedSharding:
  return NamedSharding(mesh, PartitionSpec())


def _split_batch(mesh: Mesh) -> NamedSharding:
  """The leading (batch) axis split over every device of the mesh."""
  return NamedSharding(mesh, PartitionSpec(mesh.axis_names))


@functools.partial(jax.jit, static_argnames=("model", "block_paths"))
def _embedded(outer_params, tokens, *, model, block_paths):
  return blocks_lib.embedded_tokens(model, outer_params, tokens, block_paths)


def _batch_statistics(block_params, hidden, *, block, input_groups, statistic):
  """statistic(the inputs) of one batch for each group of projections reading one tensor."""
  readers = tuple(group[0] for group in input_groups)
  inputs = blocks_lib.projection_inputs(block, block_params, hidden, readers)
  return tuple(statistic(inputs[reader]) for reader in readers)


@functools.partial(jax.jit, static_argnames=("block", "input_groups", "statistic"),
                   donate_argnums=0)
def _accumulated(sums, block_params, hidden, *, block, input_groups, statistic):
  batch = _batch_statistics(block_params, hidden, block=block, input_groups=input_groups,
                            statistic=statistic)
  return tuple(total + value for total, value in zip(sums, batch))


@functools.partial(jax.jit, static_argnames=("block",))
def _block_outputs(block_params, hidden, *, block):
  return blocks_lib.block_outputs(block, block_params, hidden)


def _calibration_sums(block: blocks_lib.DecoderBlock, block_params: PyTree,
                      hidden: list[jax.Array], statistic: Callable, mesh: Mesh
                      ) -> tuple[jax.Array, ...]:
  """The statistic of each of the block's input groups, summed over every calibration
  batch (the block dense)."""
  static = dict(block=block.module, input_groups=block.input_groups, statistic=statistic)
  shapes = jax.eval_shape(functools.partial(_batch_statistics, **static), block_params,
                          hidden[0])
  sums = tuple(jnp.zeros(s.shape, s.dtype, device=_replicated(mesh)) for s in shapes)
  for batch in hidden:
    sums = _accumulated(sums, block_params, batch, **static)
  return sums


# prune_layer(float32 kernel, summed statistic, calibration sequences) -> (mask, kernel):
# the kernel the next block's inputs are computed with, 0 where the mask prunes.
LayerPruner = Callable[[jax.Array, jax.Array, int], tuple[jax.Array, jax.Array]]


def layer_by_layer(calibration: Calibration, statistic: Callable[[jax.Array], jax.Array],
                   prune_layer: LayerPruner, updates_weights: bool) -> OneShotResult:
  """Prunes block after block, each calibrated on the pruned blocks' outputs (the module
  docstring's steps 1-4).

  Args:
    statistic: a projection input [batch, seq, in] -> its per-batch sum (module-level, so
      the compiled passes are reused from block to block).
    prune_layer: how a projection is pruned from its summed statistic.
    updates_weights: return the pruned kernels in the params (SparseGPT), or the params
      unchanged (the mask alone prunes).
  """
  model, params, mesh = calibration.model, calibration.params, calibration.mesh
  tokens, size = calibration.tokens, calibration.batch_size
  blocks = blocks_lib.decoder_blocks(model, params, calibration.maskable,
                                     (size, tokens.shape[1]))
  replicated = _replicated(mesh)
  outer = jax.device_put(blocks_lib.without_blocks(params, blocks), replicated)
  block_paths = tuple(block.path for block in blocks)
  hidden = [_embedded(outer, jax.device_put(tokens[i:i + size], _split_batch(mesh)),
                      model=model, block_paths=block_paths)
            for i in range(0, len(tokens), size)]
  masks, kernels = {}, {}
  for block in blocks:
    stored = blocks_lib.params_at(params, block.path)
    block_params = jax.tree.map(lambda leaf: leaf.astype(jnp.float32),
                                jax.device_put(stored, replicated))
    sums = _calibration_sums(block, block_params, hidden, statistic, mesh)
    flat = traverse_util.flatten_dict(block_params)
    stored_flat = traverse_util.flatten_dict(stored)
    for group, summed in zip(block.input_groups, sums):
      for projection in group:
        mask, kernel = prune_layer(flat[projection], summed, len(tokens))
        masks[block.path + projection] = mask
        if updates_weights:
          kernels[block.path + projection] = kernel.astype(stored_flat[projection].dtype)
          kernel = kernels[block.path + projection].astype(jnp.float32)
        flat[projection] = kernel
    del sums
    pruned_block = traverse_util.unflatten_dict(flat)
    for index, batch in enumerate(hidden):  # each batch's inputs freed as it is replaced
      hidden[index] = _block_outputs(pruned_block, batch, block=block.module)
  if updates_weights:
    params = traverse_util.unflatten_dict({**traverse_util.flatten_dict(params), **kernels})
  return OneShotResult(traverse_util.unflatten_dict(masks), params)


_magnitude_mask = jax.jit(magnitude_mask, static_argnames=("sparsity",))


@functools.partial(jax.jit, static_argnames=("sparsity",))
def _wanda_layer(kernel, square_sums, sparsity):
  mask = wanda_mask(kernel, jnp.sqrt(square_sums), sparsity)
  return mask, jnp.where(mask, kernel, 0.0)


@register_llm_baseline("magnitude")
def magnitude_baseline(calibration: Calibration) -> OneShotResult:
  """Per layer |W| (unstructured over the whole layer, N:M per output and group); no
  calibration data."""
  masks = {path: _magnitude_mask(kernel, sparsity=calibration.sparsity)
           for path, kernel in calibration.kernels().items()}
  return OneShotResult(traverse_util.unflatten_dict(masks), calibration.params)


@register_llm_baseline("wanda")
def wanda_baseline(calibration: Calibration) -> OneShotResult:
  """Wanda (Sun et al. 2023), layer by layer; the weights stay as they are."""
  def prune_layer(kernel, square_sums, num_sequences):
    del num_sequences  # the norms' scale changes no comparison
    return _wanda_layer(kernel, square_sums, calibration.sparsity)

  return layer_by_layer(calibration, input_square_sums, prune_layer, updates_weights=False)


@functools.partial(jax.jit, static_argnames=("sparsity",))
def _sparsegpt_layer(kernel, products, num_sequences, sparsity):
  mask, pruned = sparsegpt_prune(kernel, hessian(products, num_sequences), sparsity)
  return mask, pruned, jnp.all(jnp.isfinite(pruned))


@register_llm_baseline("sparsegpt")
def sparsegpt_baseline(calibration: Calibration) -> OneShotResult:
  """SparseGPT (Frantar & Alistarh 2023), layer by layer, with its updated weights."""
  def prune_layer(kernel, products, num_sequences):
    mask, pruned, finite = _sparsegpt_layer(kernel, products, num_sequences,
                                            calibration.sparsity)
    if not bool(finite):
      raise ValueError("SparseGPT's weights became non-finite: a layer's damped Hessian is "
                       "singular or its calibration inputs are not finite")
    return mask, pruned

  return layer_by_layer(calibration, input_products, prune_layer, updates_weights=True)
