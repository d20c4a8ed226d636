"""Pieces the decoder-only language models share: causal attention, activations, inputs.

Attention logits and softmax are float32 whatever the activations' dtype, and masked
entries get float32's most negative value rather than -inf (as transformers' eager
attention does), so a query row that sees no key (a padding token at the start) gives
uniform weights instead of NaN.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Callable, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

# Hugging Face's `hidden_act` / `activation_function` names (transformers' ACT2FN).
ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "swish": jax.nn.silu,
    "relu": jax.nn.relu,
    "gelu": functools.partial(nn.gelu, approximate=False),
    "gelu_new": functools.partial(nn.gelu, approximate=True),
    "gelu_pytorch_tanh": functools.partial(nn.gelu, approximate=True),
}


# Flax leaf name -> transformers' parameter name.
_HF_PARAMS = {"kernel": "weight", "embedding": "weight", "scale": "weight", "bias": "bias"}


def hf_key(path: tuple[str, ...], layer_list: str) -> str:
  """The checkpoint key of a params leaf: ("model", "layers_0", "mlp", "up_proj",
  "kernel") is "model.layers.0.mlp.up_proj.weight" for layer_list "layers". Only the
  layer list's index becomes ".{i}": GPT-2's ln_1 keeps its name."""
  layer = re.compile(rf"{re.escape(layer_list)}_(\d+)")
  modules = [f"{layer_list}.{match[1]}" if (match := layer.fullmatch(part)) else part
             for part in path[:-1]]
  return ".".join([*modules, _HF_PARAMS[path[-1]]])


def tied_logits(x: jax.Array, params: Mapping[str, Any], embedding_path: tuple[str, ...]
                ) -> jax.Array:
  """Logits from the embedding matrix at `embedding_path` in `params` (tied word
  embeddings): x @ embedding.T."""
  embedding = functools.reduce(lambda tree, name: tree[name], embedding_path, params)
  return jnp.einsum("bsd,vd->bsv", x, embedding.astype(x.dtype))


def activation(name: str, field: str) -> Callable[[jax.Array], jax.Array]:
  """The activation Hugging Face calls `name`, or a one-line error naming `field`."""
  if name not in ACTIVATIONS:
    raise ValueError(f"{field}={name!r} is not supported; choose one of "
                     f"{', '.join(sorted(ACTIVATIONS))}")
  return ACTIVATIONS[name]


def check_tokens(tokens: jax.Array, attention_mask: jax.Array | None) -> None:
  """Token ids must be integers [batch, seq]; a mask, if any, of the same shape."""
  if tokens.ndim != 2 or not jnp.issubdtype(tokens.dtype, jnp.integer):
    raise ValueError(f"a language model takes integer token ids [batch, seq], got "
                     f"{tokens.dtype} {tuple(tokens.shape)}")
  if attention_mask is not None and attention_mask.shape != tokens.shape:
    raise ValueError(f"attention_mask has shape {tuple(attention_mask.shape)}, the tokens "
                     f"{tuple(tokens.shape)}; give one 0/1 entry per token")


def causal_attention(query: jax.Array, key: jax.Array, value: jax.Array,
                     attention_mask: jax.Array | None, scale: float) -> jax.Array:
  """Causal multi-head attention with grouped key/value heads.

  Args:
    query: [batch, seq, heads, head_dim].
    key, value: [batch, seq, kv_heads, head_dim]; heads must divide by kv_heads. Query
      head h reads key/value head h // (heads // kv_heads), as transformers' repeat_kv
      repeats them.
    attention_mask: [batch, seq], 1 for tokens and 0 for padding keys, or None.
    scale: the logits' factor, usually head_dim ** -0.5.

  Returns:
    [batch, seq, heads, head_dim] in `value`'s dtype.
  """
  batch, seq, heads, head_dim = query.shape
  kv_heads = key.shape[2]
  # Grouping the query heads instead of repeating key and value keeps them unrepeated.
  grouped = query.reshape(batch, seq, kv_heads, heads // kv_heads, head_dim)
  logits = jnp.einsum("bqgrd,bkgd->bgrqk", grouped, key).astype(jnp.float32) * scale
  visible = jnp.tril(jnp.ones((seq, seq), bool))[None, None, None]
  if attention_mask is not None:
    visible = visible & attention_mask.astype(bool)[:, None, None, None, :]
  logits = jnp.where(visible, logits, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(logits, axis=-1).astype(value.dtype)
  context = jnp.einsum("bgrqk,bkgd->bqgrd", weights, value)
  return context.reshape(batch, seq, heads, head_dim)
