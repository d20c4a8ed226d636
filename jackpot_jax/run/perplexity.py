"""Perplexity of a causal language model over a text split, by the packed protocol.

The protocol: the split's documents tokenized as the tokenizer encodes by default,
joined with its end-of-text token between documents, cut into non-overlapping
data.seq_len-token sequences, the remainder dropped (`data.text`). Each sequence is read
on its own; every token after its first is predicted from the tokens before it in the
sequence, so a sequence gives seq_len - 1 predictions, and

  perplexity = exp(mean negative log-likelihood over every predicted token).

Each batch is one jitted program over the mesh (rows split over its devices, params
and masks where the caller placed them); the padded rows of the last batch weigh
nothing. Per-batch sums come back to the host and are added in float64.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.sharding import Mesh

from jackpot_jax import config_defaults, data as data_lib, dispatch
from jackpot_jax.bounded_cache import BoundedCache
from jackpot_jax.data import text
from jackpot_jax.data.config import TEXT_KINDS, DataSpec, as_spec
from jackpot_jax.run import parallel

PyTree = Any
PROTOCOL = "packed"
DEFAULT_BATCH_SIZE = config_defaults.base_config().eval.perplexity_batch_size


@dataclasses.dataclass(frozen=True)
class Perplexity:
  """exp(`nll`), `nll` the mean next-token negative log-likelihood (nats) over `tokens`
  predicted tokens of `sequences` sequences."""

  perplexity: float
  nll: float
  tokens: int
  sequences: int


def nll_sums(params: PyTree, masks: PyTree | None, batch: Mapping[str, jax.Array], *,
             model: nn.Module) -> dict[str, jax.Array]:
  """{"nll": summed next-token NLL (float32), "tokens": predicted tokens (int32)} of a
  batch {'tokens' [B, seq_len], 'mask' [B]}, for W * masks (dense W when None)."""
  variables = {"params": params} if masks is None else {"params": params, "masks": masks}
  tokens = batch["tokens"]
  logits = model.apply(variables, tokens)[:, :-1].astype(jnp.float32)
  losses = optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])
  weights = jnp.broadcast_to(batch["mask"][:, None], losses.shape)
  return {"nll": jnp.sum(jnp.where(weights, losses, 0.0)),
          "tokens": jnp.sum(weights, dtype=jnp.int32)}


# `nll_sums` of each model, jitted once: a search measures held-out perplexity at every
# evaluation, and a new jit per call would trace and compile it each time.
_nll_steps = BoundedCache(8)


def _nll_step(model: nn.Module):
  return _nll_steps.get(model, lambda: jax.jit(functools.partial(nll_sums, model=model)))


def _check_model(spec: DataSpec, model: nn.Module) -> None:
  """The tokenizer's ids fit the model's embeddings, data.seq_len its learned positions."""
  vocab_size = getattr(model, "vocab_size", None)
  if vocab_size is not None:
    text.check_model_fit(spec, vocab_size, getattr(model, "n_positions", None))


def perplexity(model: nn.Module, params: PyTree, data_config: DataSpec | Mapping[str, Any], *,
               masks: PyTree | None = None, split: str | None = None,
               batch_size: int = DEFAULT_BATCH_SIZE,
               mesh: Mesh | None = None) -> Perplexity:
  """Perplexity of `model` with W * masks over a text split, by the packed protocol.

  Args:
    model: a causal LM called `model.apply({"params": ..., "masks": ...}, tokens)` that
      returns logits [batch, seq, vocab] (`import_hf_decoder`'s model).
    params: its params; masks: a tree of 0/1 masks for its maskable kernels, or None.
    data_config: a text data config (`text:<dir>` or `tokens:<dir>`) or its `DataSpec`.
    split: None for data.eval_split; 'holdout' for the held-out training sequences, or
      any split of the data folder.
    batch_size: sequences per batch (eval.perplexity_batch_size), rounded up to a
      multiple of the mesh's devices.
    mesh: where the batches are split; None: every device.

  Raises:
    ValueError (one line): the data is not text, or does not fit the model.
  """
  spec = as_spec(data_config)
  if spec.kind not in TEXT_KINDS:
    raise ValueError(f"perplexity needs text data (text:<dir> or tokens:<dir>), got "
                     f"data.name={spec.name}")
  split = spec.eval_split if split is None else split
  if not len(text.open_text(spec).rows(split)[1]):
    raise ValueError(f"the {split} split of {spec.name} has no sequences to measure "
                     "perplexity on; hold some out with data.holdout_sequences > 0")
  _check_model(spec, model)
  mesh = parallel.make_mesh() if mesh is None else mesh
  devices = mesh.devices.size
  batch_size = -(-batch_size // devices) * devices
  step = _nll_step(model)
  window, sums = dispatch.DispatchWindow(), []
  batches = data_lib.make_eval_batches(
      spec, split=split, batch_size=batch_size,
      process_index=jax.process_index(), process_count=jax.process_count())
  with contextlib.closing(batches):
    for batch in batches:
      sums.append(step(params, masks, parallel.put_batch(batch, mesh)))
      window.admit(sums[-1])
  host_sums = jax.device_get(sums)
  nll = float(np.sum([s["nll"] for s in host_sums], dtype=np.float64))
  tokens = int(np.sum([s["tokens"] for s in host_sums], dtype=np.int64))
  mean = nll / tokens
  return Perplexity(perplexity=math.exp(mean), nll=mean, tokens=tokens,
                    sequences=tokens // (spec.seq_len - 1))


def describe(data_config: DataSpec | Mapping[str, Any], split: str | None = None) -> dict:
  """The protocol of `perplexity` over `split` (None: data.eval_split), for reports:
  {"protocol": "packed", "split", "seq_len", "sequences", "tokens" (predicted tokens),
  "separator" (the end-of-text token)}."""
  spec = as_spec(data_config)
  opened = text.open_text(spec)
  split = spec.eval_split if split is None else split
  _, rows = opened.rows(split)
  return {"protocol": PROTOCOL, "split": opened.split_name(split), "seq_len": spec.seq_len,
          "sequences": len(rows), "tokens": len(rows) * (spec.seq_len - 1),
          "separator": opened.tokenizer.eos_token}
