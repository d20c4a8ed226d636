"""GPT-2 in Hugging Face's GPT2LMHeadModel layout.

Flax module names spell transformers' state_dict keys (`causal_lm.hf_key`):
transformer.{wte, wpe, h.{i}.{ln_1, attn.{c_attn, c_proj}, ln_2, mlp.{c_fc, c_proj}},
ln_f}, and lm_head when the embeddings are not tied (GPT-2's are by default: the logits
then read wte). GPT-2's Conv1D stores its weight [in, out], which is a Dense kernel as it
is; c_attn stays fused (query, key and value side by side along its outputs), so a mask
covers it whole as it covers the checkpoint's tensor.

Blocks are pre-norm with learned absolute positions 0..seq-1 and "gelu_new" (tanh GELU)
MLPs; attention scales by 1/sqrt(head_dim) (and 1/(layer + 1) with
scale_attn_by_inverse_layer_idx), as transformers does.
"""

from __future__ import annotations

import functools
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp

from jackpot_jax.models import causal_lm
from jackpot_jax.models.registry import ModelSpec, register

_EMBEDDING_INIT = nn.initializers.normal(0.02)
_MASK_BUFFER = re.compile(r"transformer\.h\.\d+\.attn\.(bias|masked_bias)")
_BLOCK_PROJECTION = re.compile(r"transformer/h_\d+/(attn/c_attn|attn/c_proj|mlp/c_fc|mlp/c_proj)/"
                               r"kernel")


def _layer_norm(epsilon: float, name: str, x: jax.Array) -> jax.Array:
  # Two-pass variance, as PyTorch computes it: E[x^2] - E[x]^2 loses digits.
  return nn.LayerNorm(epsilon=epsilon, use_fast_variance=False, name=name)(x)


class Attention(nn.Module):
  """Causal self-attention from the fused c_attn, then c_proj."""

  num_heads: int
  scale: float

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    batch, seq, hidden = x.shape
    qkv = nn.Dense(3 * hidden, name="c_attn")(x)
    query, key, value = (part.reshape(batch, seq, self.num_heads, hidden // self.num_heads)
                         for part in jnp.split(qkv, 3, axis=-1))
    context = causal_lm.causal_attention(query, key, value, attention_mask, self.scale)
    return nn.Dense(hidden, name="c_proj")(context.reshape(batch, seq, hidden))


class MLP(nn.Module):
  """c_proj(act(c_fc(x)))."""

  inner: int
  activation_function: str

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = causal_lm.activation(self.activation_function, "activation_function")
    return nn.Dense(x.shape[-1], name="c_proj")(act(nn.Dense(self.inner, name="c_fc")(x)))


class Block(nn.Module):
  """Pre-norm block: x + attn(ln_1(x)), then x + mlp(ln_2(x))."""

  num_heads: int
  inner: int
  epsilon: float
  activation_function: str
  scale: float

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    h = _layer_norm(self.epsilon, "ln_1", x)
    x = x + Attention(self.num_heads, self.scale, name="attn")(h, attention_mask)
    h = _layer_norm(self.epsilon, "ln_2", x)
    return x + MLP(self.inner, self.activation_function, name="mlp")(h)


class Transformer(nn.Module):
  """transformers' GPT2Model: wte + wpe, h_{i} (HF's h.{i}), ln_f."""

  vocab_size: int
  n_positions: int
  n_embd: int
  layer_norm_epsilon: float
  scales: tuple[float, ...]  # each block's attention scale
  block: Any  # Block with every field but the scale bound

  @nn.compact
  def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.n_embd, embedding_init=_EMBEDDING_INIT,
                 name="wte")(tokens)
    positions = nn.Embed(self.n_positions, self.n_embd, embedding_init=_EMBEDDING_INIT,
                         name="wpe")(jnp.arange(tokens.shape[1]))
    x = x + positions[None].astype(x.dtype)
    for i, scale in enumerate(self.scales):
      x = self.block(scale=scale, name=f"h_{i}")(x, attention_mask)
    return _layer_norm(self.layer_norm_epsilon, "ln_f", x)


class GPT2(nn.Module):
  """GPT2LMHeadModel; fields are config.json's names (`hf_model_kwargs` reads them).

  Attributes:
    vocab_size, n_positions, n_embd, n_layer, n_head: as in transformers' GPT2Config.
    n_inner: the MLP's width; None: 4 * n_embd.
    activation_function: Hugging Face's name ("gelu_new").
    layer_norm_epsilon: every LayerNorm's epsilon.
    scale_attn_weights: divide attention logits by sqrt(head_dim).
    scale_attn_by_inverse_layer_idx: also divide them by layer index + 1.
    tie_word_embeddings: the logits read wte; no lm_head.
  """

  vocab_size: int = 50257
  n_positions: int = 1024
  n_embd: int = 768
  n_layer: int = 12
  n_head: int = 12
  n_inner: int | None = None
  activation_function: str = "gelu_new"
  layer_norm_epsilon: float = 1e-5
  scale_attn_weights: bool = True
  scale_attn_by_inverse_layer_idx: bool = False
  tie_word_embeddings: bool = True

  # The checkpoint's name of the base model; GPT-2's own checkpoints store only the base
  # model's tensors, without this prefix (transformers loads those too).
  hf_base_model = "transformer"
  # The input embedding, which tied logits read.
  hf_embedding = ("transformer", "wte", "embedding")

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False,
               attention_mask: jax.Array | None = None) -> jax.Array:
    """Logits [batch, seq, vocab] of int token ids [batch, seq]; `attention_mask`
    [batch, seq] (1 token, 0 padding) hides padding keys. `train` changes nothing: the
    weights are frozen and there is no dropout."""
    del train
    self._check_fields()
    causal_lm.check_tokens(tokens, attention_mask)
    if tokens.shape[1] > self.n_positions:
      raise ValueError(f"{tokens.shape[1]} tokens exceed GPT-2's n_positions="
                       f"{self.n_positions} learned positions; use shorter sequences")
    head_dim = self.n_embd // self.n_head
    base = head_dim ** -0.5 if self.scale_attn_weights else 1.0
    scales = tuple(base / (i + 1) if self.scale_attn_by_inverse_layer_idx else base
                   for i in range(self.n_layer))
    block = functools.partial(Block, self.n_head, self.n_inner or 4 * self.n_embd,
                              self.layer_norm_epsilon, self.activation_function)
    x = Transformer(self.vocab_size, self.n_positions, self.n_embd, self.layer_norm_epsilon,
                    scales, block, name="transformer")(tokens, attention_mask)
    if self.tie_word_embeddings:
      return causal_lm.tied_logits(x, self.variables["params"], self.hf_embedding)
    return nn.Dense(self.vocab_size, use_bias=False, name="lm_head")(x)

  def _check_fields(self) -> None:
    if self.n_embd % self.n_head:
      raise ValueError(f"n_embd {self.n_embd} is not divisible by n_head={self.n_head}")
    causal_lm.activation(self.activation_function, "activation_function")

  def hf_tensor(self, path: tuple[str, ...]) -> tuple[str, str]:
    """(checkpoint key, transform) of a params leaf: the blocks' Conv1D weights are
    stored [in, out] as Flax kernels are; lm_head is an nn.Linear, (out, in)."""
    transform = "linear" if path == ("lm_head", "kernel") else "identity"
    return causal_lm.hf_key(path, "h"), transform

  def hf_buffer(self, key: str) -> bool:
    """GPT-2's original checkpoints saved each layer's causal-mask buffers, which carry
    no weights: read and written back unchanged."""
    return _MASK_BUFFER.fullmatch(key) is not None




def is_block_projection(path: tuple[str, ...], shape: tuple[int, ...]) -> bool:
  """The default masks: c_attn, c_proj, c_fc and the MLP's c_proj of every block;
  embeddings, norms and lm_head stay dense."""
  del shape
  return _BLOCK_PROJECTION.fullmatch("/".join(path)) is not None


# transformers' GPT2Config defaults for keys a config.json may omit (tie_word_embeddings
# is PretrainedConfig's).
_DEFAULTS = dict(vocab_size=50257, n_positions=1024, n_embd=768, n_layer=12, n_head=12,
                 n_inner=None, activation_function="gelu_new", layer_norm_epsilon=1e-5,
                 scale_attn_weights=True, scale_attn_by_inverse_layer_idx=False,
                 tie_word_embeddings=True)


def hf_model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
  """`GPT2` fields from a GPT-2 config.json (transformers' defaults for keys it omits)."""
  if config.get("add_cross_attention"):
    raise ValueError("GPT-2 with cross-attention (add_cross_attention) is not supported")
  return {key: config.get(key, default) for key, default in _DEFAULTS.items()}


def _build(num_classes: int, **kwargs) -> GPT2:
  """The registry's builder: `num_classes` is the vocabulary (the logits' width)."""
  return GPT2(vocab_size=num_classes, **kwargs)


# Default sizes are GPT-2 small's; an import takes every size from config.json.
register(ModelSpec(
    name="gpt2",
    build=_build,
    classifier="lm_head",
    first_layer="transformer.wte",
    input_shape=(1024,),
    maskable=is_block_projection,
    inputs="tokens",
    feature_blocks=(Block,),
))
