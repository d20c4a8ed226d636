"""Llama-family decoders (Llama 2/3, Qwen2) in Hugging Face's LlamaForCausalLM layout.

Flax module names spell transformers' state_dict keys (`causal_lm.hf_key`):
model.embed_tokens, model.layers.{i}.{input_layernorm, self_attn.{q,k,v,o}_proj,
post_attention_layernorm, mlp.{gate,up,down}_proj}, model.norm, lm_head (absent when the
embeddings are tied: the logits then read the embedding matrix).

Numerics follow transformers: RMSNorm normalises in float32 and casts back before the
scale; rotary embeddings rotate halves ([x1, x2] -> [-x2, x1]) with cos/sin computed in
float32 from the checkpoint's rope_theta and rope_scaling ("linear" or "llama3");
grouped-query attention shares each key/value head among heads // kv_heads query heads.
Positions are 0..seq-1, as transformers' forward uses them without position_ids.
Qwen2 is this model with biases on query, key and value only.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.models import causal_lm
from jackpot_jax.models.registry import ModelSpec, register

_EMBEDDING_INIT = nn.initializers.normal(0.02)
_ROPE_TYPES = ("linear", "llama3")
_LLAMA3_KEYS = ("factor", "low_freq_factor", "high_freq_factor",
                "original_max_position_embeddings")
_ROTARY_BUFFER = re.compile(r"model\.layers\.\d+\.self_attn\.rotary_emb\.inv_freq")
_BLOCK_PROJECTION = re.compile(r"model/layers_\d+/(self_attn|mlp)/\w+_proj/kernel")


@dataclasses.dataclass(frozen=True)
class RopeScaling:
  """A checkpoint's `rope_scaling` (frozen, so a model holding it stays hashable).

  Attributes:
    rope_type: "linear" (every frequency divided by `factor`) or "llama3" (low
      frequencies divided by `factor`, high ones kept, those between interpolated).
    factor: the context extension factor.
    low_freq_factor, high_freq_factor, original_max_position_embeddings: llama3's band
      edges, wavelengths original_max_position_embeddings / {low,high}_freq_factor.
  """

  rope_type: str
  factor: float
  low_freq_factor: float = 1.0
  high_freq_factor: float = 4.0
  original_max_position_embeddings: int = 8192

  @classmethod
  def from_hf(cls, rope_scaling: Mapping[str, Any] | None) -> RopeScaling | None:
    """Parses config.json's rope_scaling; None or type "default" means no scaling."""
    if rope_scaling is None:
      return None
    rope_type = rope_scaling.get("rope_type", rope_scaling.get("type"))
    if rope_type == "default":
      return None
    if rope_type not in _ROPE_TYPES:
      raise ValueError(f"rope_scaling type {rope_type!r} is not supported; supported: "
                       f"{', '.join(_ROPE_TYPES)} (or none)")
    needed = ("factor",) if rope_type == "linear" else _LLAMA3_KEYS
    missing = [key for key in needed if key not in rope_scaling]
    if missing:
      raise ValueError(f"rope_scaling of type {rope_type!r} lacks {', '.join(missing)}")
    return cls(rope_type, **{key: rope_scaling[key] for key in needed})


def rope_inverse_frequencies(head_dim: int, theta: float,
                             scaling: RopeScaling | None) -> np.ndarray:
  """(head_dim // 2,) float32 inverse frequencies, as transformers' ROPE_INIT_FUNCTIONS."""
  exponents = np.arange(0, head_dim, 2, dtype=np.float32) / np.float32(head_dim)
  inv_freq = (1.0 / np.power(np.float32(theta), exponents)).astype(np.float32)
  if scaling is None:
    return inv_freq
  if scaling.rope_type == "linear":
    return (inv_freq / np.float32(scaling.factor)).astype(np.float32)
  old_context = scaling.original_max_position_embeddings
  low_freq_wavelen = old_context / scaling.low_freq_factor
  high_freq_wavelen = old_context / scaling.high_freq_factor
  wavelen = 2 * math.pi / inv_freq
  scaled = np.where(wavelen > low_freq_wavelen, inv_freq / scaling.factor, inv_freq)
  smooth = ((old_context / wavelen - scaling.low_freq_factor)
            / (scaling.high_freq_factor - scaling.low_freq_factor))
  smoothed = (1 - smooth) * scaled / scaling.factor + smooth * scaled
  medium = (wavelen >= high_freq_wavelen) & (wavelen <= low_freq_wavelen)
  return np.where(medium, smoothed, scaled).astype(np.float32)


def _rotate_half(x: jax.Array) -> jax.Array:
  half = x.shape[-1] // 2
  return jnp.concatenate([-x[..., half:], x[..., :half]], axis=-1)


def apply_rope(x: jax.Array, inv_freq: np.ndarray) -> jax.Array:
  """Rotates [batch, seq, heads, head_dim] by positions 0..seq-1 (cos/sin in float32)."""
  positions = np.arange(x.shape[1], dtype=np.float32)
  freqs = positions[:, None] * inv_freq[None, :]
  angles = np.concatenate([freqs, freqs], axis=-1)[None, :, None, :]
  cos, sin = jnp.cos(angles).astype(x.dtype), jnp.sin(angles).astype(x.dtype)
  return x * cos + _rotate_half(x) * sin


class RMSNorm(nn.Module):
  """transformers' LlamaRMSNorm: normalise in float32, cast back, then scale."""

  epsilon: float

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", nn.initializers.ones, (x.shape[-1],))
    x32 = x.astype(jnp.float32)
    normed = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.epsilon)
    return scale * normed.astype(x.dtype)


class Attention(nn.Module):
  """Grouped-query self-attention with rotary positions: {q,k,v,o}_proj."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  inv_freq: tuple[float, ...]
  qkv_bias: bool
  o_bias: bool

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    batch, seq, hidden = x.shape

    def project(name: str, heads: int) -> jax.Array:
      projected = nn.Dense(heads * self.head_dim, use_bias=self.qkv_bias, name=name)(x)
      return projected.reshape(batch, seq, heads, self.head_dim)

    inv_freq = np.asarray(self.inv_freq, np.float32)
    query = apply_rope(project("q_proj", self.num_heads), inv_freq)
    key = apply_rope(project("k_proj", self.num_kv_heads), inv_freq)
    value = project("v_proj", self.num_kv_heads)
    context = causal_lm.causal_attention(query, key, value, attention_mask,
                                         self.head_dim ** -0.5)
    return nn.Dense(hidden, use_bias=self.o_bias, name="o_proj")(
        context.reshape(batch, seq, self.num_heads * self.head_dim))


class MLP(nn.Module):
  """SwiGLU: down_proj(act(gate_proj(x)) * up_proj(x))."""

  intermediate_size: int
  hidden_act: str
  use_bias: bool

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    act = causal_lm.activation(self.hidden_act, "hidden_act")
    gate = nn.Dense(self.intermediate_size, use_bias=self.use_bias, name="gate_proj")(x)
    up = nn.Dense(self.intermediate_size, use_bias=self.use_bias, name="up_proj")(x)
    return nn.Dense(x.shape[-1], use_bias=self.use_bias, name="down_proj")(act(gate) * up)


class DecoderLayer(nn.Module):
  """Pre-norm block: x + self_attn(norm(x)), then x + mlp(norm(x))."""

  num_heads: int
  num_kv_heads: int
  head_dim: int
  inv_freq: tuple[float, ...]
  intermediate_size: int
  rms_norm_eps: float
  hidden_act: str
  qkv_bias: bool
  o_bias: bool
  mlp_bias: bool

  @nn.compact
  def __call__(self, x: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    h = RMSNorm(self.rms_norm_eps, name="input_layernorm")(x)
    x = x + Attention(self.num_heads, self.num_kv_heads, self.head_dim, self.inv_freq,
                      self.qkv_bias, self.o_bias, name="self_attn")(h, attention_mask)
    h = RMSNorm(self.rms_norm_eps, name="post_attention_layernorm")(x)
    return x + MLP(self.intermediate_size, self.hidden_act, self.mlp_bias, name="mlp")(h)


class Llama(nn.Module):
  """LlamaForCausalLM; fields are config.json's names (`hf_model_kwargs` reads them).

  Attributes:
    vocab_size, hidden_size, intermediate_size, num_hidden_layers, num_attention_heads:
      as in transformers' LlamaConfig.
    num_key_value_heads: key/value heads (grouped-query attention); None: one per head.
    head_dim: per-head width; None: hidden_size // num_attention_heads.
    rms_norm_eps: every RMSNorm's epsilon.
    rope_theta: the rotary base.
    rope_scaling: `RopeScaling`, or None.
    hidden_act: the MLP's gate activation (Hugging Face's name, "silu").
    tie_word_embeddings: the logits read the embedding matrix; no lm_head.
    qkv_bias: biases on q_proj, k_proj and v_proj (Llama's attention_bias, Qwen2).
    o_bias: a bias on o_proj (Llama's attention_bias).
    mlp_bias: biases on the MLP's three projections.
  """

  vocab_size: int = 32000
  hidden_size: int = 4096
  intermediate_size: int = 11008
  num_hidden_layers: int = 32
  num_attention_heads: int = 32
  num_key_value_heads: int | None = None
  head_dim: int | None = None
  rms_norm_eps: float = 1e-6
  rope_theta: float = 10000.0
  rope_scaling: RopeScaling | None = None
  hidden_act: str = "silu"
  tie_word_embeddings: bool = False
  qkv_bias: bool = False
  o_bias: bool = False
  mlp_bias: bool = False

  # The checkpoint's name of the base model; a folder may store only the base model's
  # tensors, without this prefix (transformers loads those too).
  hf_base_model = "model"
  # The input embedding, which tied logits read.
  hf_embedding = ("model", "embed_tokens", "embedding")

  @nn.compact
  def __call__(self, tokens: jax.Array, train: bool = False,
               attention_mask: jax.Array | None = None) -> jax.Array:
    """Logits [batch, seq, vocab] of int token ids [batch, seq]; `attention_mask`
    [batch, seq] (1 token, 0 padding) hides padding keys. `train` changes nothing: the
    weights are frozen and there is no dropout."""
    del train
    self._check_fields()
    causal_lm.check_tokens(tokens, attention_mask)
    kv_heads = self.num_key_value_heads or self.num_attention_heads
    head_dim = self.head_dim or self.hidden_size // self.num_attention_heads
    inv_freq = rope_inverse_frequencies(head_dim, self.rope_theta, self.rope_scaling)
    layer = functools.partial(
        DecoderLayer, self.num_attention_heads, kv_heads, head_dim, tuple(inv_freq.tolist()),
        self.intermediate_size, self.rms_norm_eps, self.hidden_act, self.qkv_bias,
        self.o_bias, self.mlp_bias)
    x = Backbone(self.vocab_size, self.hidden_size, self.num_hidden_layers, self.rms_norm_eps,
                 layer, name="model")(tokens, attention_mask)
    if self.tie_word_embeddings:
      return causal_lm.tied_logits(x, self.variables["params"], self.hf_embedding)
    return nn.Dense(self.vocab_size, use_bias=False, name="lm_head")(x)

  def _check_fields(self) -> None:
    if self.head_dim is None and self.hidden_size % self.num_attention_heads:
      raise ValueError(f"hidden_size {self.hidden_size} is not divisible by "
                       f"num_attention_heads={self.num_attention_heads}; set head_dim")
    kv_heads = self.num_key_value_heads or self.num_attention_heads
    if self.num_attention_heads % kv_heads:
      raise ValueError(f"num_attention_heads={self.num_attention_heads} is not divisible by "
                       f"num_key_value_heads={kv_heads}")
    if (self.head_dim or self.hidden_size // self.num_attention_heads) % 2:
      raise ValueError("the head width is odd; rotary embeddings rotate pairs of channels")
    causal_lm.activation(self.hidden_act, "hidden_act")

  def hf_tensor(self, path: tuple[str, ...]) -> tuple[str, str]:
    """(checkpoint key, transform) of a params leaf: nn.Linear weights are (out, in)."""
    return causal_lm.hf_key(path, "layers"), "linear" if path[-1] == "kernel" else "identity"

  def hf_buffer(self, key: str) -> bool:
    """Old Llama checkpoints saved each layer's rotary inv_freq, which carries no
    weights: read and written back unchanged."""
    return _ROTARY_BUFFER.fullmatch(key) is not None


class Backbone(nn.Module):
  """transformers' LlamaModel: embed_tokens, layers_{i} (HF's layers.{i}), norm."""

  vocab_size: int
  hidden_size: int
  num_layers: int
  rms_norm_eps: float
  layer: Any  # DecoderLayer with every field bound

  @nn.compact
  def __call__(self, tokens: jax.Array, attention_mask: jax.Array | None) -> jax.Array:
    x = nn.Embed(self.vocab_size, self.hidden_size, embedding_init=_EMBEDDING_INIT,
                 name="embed_tokens")(tokens)
    for i in range(self.num_layers):
      x = self.layer(name=f"layers_{i}")(x, attention_mask)
    return RMSNorm(self.rms_norm_eps, name="norm")(x)




def is_block_projection(path: tuple[str, ...], shape: tuple[int, ...]) -> bool:
  """The default masks: every attention and MLP projection of the decoder layers;
  embeddings, norms and lm_head stay dense."""
  del shape
  return _BLOCK_PROJECTION.fullmatch("/".join(path)) is not None


# transformers' LlamaConfig / Qwen2Config defaults for keys a config.json may omit.
_LLAMA_DEFAULTS = dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=None,
                       head_dim=None, hidden_act="silu", rms_norm_eps=1e-6,
                       rope_theta=10000.0, rope_scaling=None, tie_word_embeddings=False,
                       attention_bias=False, mlp_bias=False)
_QWEN2_DEFAULTS = dict(_LLAMA_DEFAULTS, vocab_size=151936, intermediate_size=22016)


def hf_model_kwargs(config: Mapping[str, Any]) -> dict[str, Any]:
  """`Llama` fields from a Llama or Qwen2 config.json (transformers' defaults for keys it
  omits); Qwen2 has biases on q, k and v only and no sliding-window layers here."""
  qwen2 = config.get("model_type") == "qwen2"
  if qwen2 and (config.get("use_sliding_window") or "sliding_attention" in
                (config.get("layer_types") or ())):
    raise ValueError("Qwen2 sliding-window attention (use_sliding_window) is not supported")
  defaults = _QWEN2_DEFAULTS if qwen2 else _LLAMA_DEFAULTS
  kwargs = {key: config.get(key, default) for key, default in defaults.items()}
  kwargs["rope_scaling"] = RopeScaling.from_hf(kwargs["rope_scaling"])
  attention_bias, mlp_bias = kwargs.pop("attention_bias"), kwargs.pop("mlp_bias")
  if qwen2:
    return {**kwargs, "qkv_bias": True, "o_bias": False, "mlp_bias": False}
  return {**kwargs, "qkv_bias": attention_bias, "o_bias": attention_bias,
          "mlp_bias": mlp_bias}


def _build(num_classes: int, **kwargs) -> Llama:
  """The registry's builder: `num_classes` is the vocabulary (the logits' width)."""
  return Llama(vocab_size=num_classes, **kwargs)


# Default sizes are the 7B models'; an import takes every size from config.json.
for _name, _qkv_bias in (("llama", False), ("qwen2", True)):
  register(ModelSpec(
      name=_name,
      build=functools.partial(_build, qkv_bias=_qkv_bias),
      classifier="lm_head",
      first_layer="model.embed_tokens",
      input_shape=(2048,),
      maskable=is_block_projection,
      inputs="tokens",
      feature_blocks=(DecoderLayer,),
  ))
