"""Vision Transformers (ViT, DeiT) in Hugging Face's ViTForImageClassification layout.

Flax module names spell HF's state_dict keys through `torch_module_name`:
vit.embeddings.{cls_token, position_embeddings, patch_embeddings.projection},
vit.encoder.layer.{i}.{layernorm_before, attention.attention.{query,key,value},
attention.output.dense, layernorm_after, intermediate.dense, output.dense}, vit.layernorm,
classifier. timm's VisionTransformer checkpoints import too (`checkpoint_layouts`): their
names map onto these, and the fused `attn.qkv` splits into query, key and value by rows.
So do Hugging Face's DeiTForImageClassification ones (deit.* for vit.*): a DeiT has a
distillation token after the class token (`distillation_token`), and its head reads the
class token as a ViT's does. A Hugging Face folder's config.json picks the sizes
(`from_hf_config`).

Blocks are pre-norm with exact (or tanh) GELU and no dropout: the weights are frozen, so
`train` changes nothing. The "cls" head reads token 0 after the final norm; "mean"
averages the patch tokens (timm's global_pool="avg", class token excluded) and applies the
final norm after pooling (timm's fc_norm). Norms are per token, so for "cls" taking token
0 first and normalising it alone is the same.

The position embeddings' grid is the input's at initialisation. An input with another
patch grid gets the grid resized as PyTorch's F.interpolate(mode="bicubic",
align_corners=False, size=...) does: HF's interpolate_pos_encoding=True, or with
`pos_antialias` timm's dynamic_img_size (antialias=True). The class token's embedding is
kept. jax.image.resize is no substitute: its cubic kernel has a=-0.5, PyTorch's -0.75.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from jackpot_jax.models.registry import FolderModel, ModelSpec, register, register_folder_reader

_POOLS = ("cls", "mean")
_GELUS = ("exact", "tanh")
_EMBEDDING_INIT = nn.initializers.truncated_normal(0.02)

# PyTorch's cubic convolution coefficient for mode="bicubic"; the antialiased kernel
# (antialias=True) uses -0.5, as PIL does.
_CUBIC_A = -0.75
_ANTIALIAS_CUBIC_A = -0.5


def _cubic_near(x: float, a: float) -> float:
  """Keys' cubic kernel for |x| <= 1."""
  return ((a + 2) * x - (a + 3)) * x * x + 1


def _cubic_far(x: float, a: float) -> float:
  """Keys' cubic kernel for 1 < |x| < 2."""
  return ((a * x - 5 * a) * x + 8 * a) * x - 4 * a


def _bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of PyTorch's bicubic upsample_bicubic2d along one axis.

  Source positions are scale * (i + 0.5) - 0.5 with scale = in / out (the `size=` form;
  a scale_factor would be used as given), four taps, indices clamped to the border.
  """
  scale = in_size / out_size
  weights = np.zeros((out_size, in_size))
  for i in range(out_size):
    real = scale * (i + 0.5) - 0.5
    index = min(math.floor(real), in_size - 1)
    t = min(max(real - index, 0.0), 1.0)
    taps = (_cubic_far(t + 1, _CUBIC_A), _cubic_near(t, _CUBIC_A),
            _cubic_near(1 - t, _CUBIC_A), _cubic_far(2 - t, _CUBIC_A))
    for k, tap in enumerate(taps):
      weights[i, min(max(index - 1 + k, 0), in_size - 1)] += tap
  return weights


def _antialiased_cubic(x: float) -> float:
  x = abs(x)
  if x < 1:
    return _cubic_near(x, _ANTIALIAS_CUBIC_A)
  return _cubic_far(x, _ANTIALIAS_CUBIC_A) if x < 2 else 0.0


def _antialiased_bicubic_weights(in_size: int, out_size: int) -> np.ndarray:
  """(out, in) weights of PyTorch's bicubic with antialias=True along one axis.

  The kernel widens by the downscaling factor; taps outside the input are dropped and the
  rest renormalised to sum to one (no border clamping).
  """
  scale = in_size / out_size
  support = 2.0 * max(scale, 1.0)
  inverse = 1.0 / scale if scale >= 1.0 else 1.0
  weights = np.zeros((out_size, in_size))
  for i in range(out_size):
    center = scale * (i + 0.5)
    # int() truncates towards zero, as PyTorch's static_cast does.
    low = max(int(center - support + 0.5), 0)
    high = min(int(center + support + 0.5), in_size)
    taps = np.array([_antialiased_cubic((j - center + 0.5) * inverse)
                     for j in range(low, high)])
    total = taps.sum()
    weights[i, low:high] = taps / total if total != 0 else taps
  return weights


def resize_grid(grid: jax.Array, size: tuple[int, int], antialias: bool = False) -> jax.Array:
  """Resizes an (h, w, channels) array as PyTorch's bicubic F.interpolate(size=size).

  Args:
    grid: (h, w, channels).
    size: the output's (height, width).
    antialias: PyTorch's antialias=True (what timm's resample_abs_pos_embed passes).

  Returns:
    (size[0], size[1], channels) in `grid`'s dtype.
  """
  weights = _antialiased_bicubic_weights if antialias else _bicubic_weights
  rows = jnp.asarray(weights(grid.shape[0], size[0]), jnp.float32)
  cols = jnp.asarray(weights(grid.shape[1], size[1]), jnp.float32)
  # HIGHEST: accelerators would otherwise multiply float32 in bfloat16 passes.
  resized = jnp.einsum("ih,jw,hwc->ijc", rows, cols, grid.astype(jnp.float32),
                       precision=jax.lax.Precision.HIGHEST)
  return resized.astype(grid.dtype)


def _position_grid(positions: jax.Array, grid: tuple[int, int], antialias: bool,
                   prefix: int = 1) -> jax.Array:
  """Position embeddings (1, prefix + n, dim) for an input with a patch grid `grid`.

  A stored square grid other than `grid` is resized, the rows of the `prefix` tokens
  (class, distillation) kept; a non-square stored grid cannot be recovered from its
  length, so it must fit as it is.
  """
  stored = positions.shape[1] - prefix
  side = math.isqrt(stored)
  wanted = grid[0] * grid[1]
  if side * side != stored:
    if stored != wanted:
      raise ValueError(f"position embeddings for {stored} patches (not a square grid) "
                       f"cannot be resized to a {grid[0]}x{grid[1]} patch grid")
    return positions
  if grid == (side, side):
    return positions
  patches = positions[0, prefix:].reshape(side, side, -1)
  resized = resize_grid(patches, grid, antialias).reshape(1, wanted, -1)
  return jnp.concatenate([positions[:, :prefix], resized], axis=1)


class PatchEmbeddings(nn.Module):
  """Non-overlapping patches projected by a conv of stride = kernel = patch size."""

  hidden_size: int
  patch_size: int

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    patch = (self.patch_size, self.patch_size)
    return nn.Conv(self.hidden_size, patch, strides=patch, padding="VALID",
                   dtype=images.dtype, name="projection")(images)


class Embeddings(nn.Module):
  """Patch tokens after a class token (and a DeiT's distillation token), plus position
  embeddings (resized if the input's patch grid is not the stored one)."""

  hidden_size: int
  patch_size: int
  pos_antialias: bool = False
  distillation_token: bool = False

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    patches = PatchEmbeddings(self.hidden_size, self.patch_size,
                              name="patch_embeddings")(images)
    batch, height, width, dim = patches.shape
    tokens = patches.reshape(batch, height * width, dim)
    names = ("cls_token", "distillation_token") if self.distillation_token else ("cls_token",)
    leading = [jnp.broadcast_to(self.param(name, _EMBEDDING_INIT, (1, 1, dim)).astype(
        tokens.dtype), (batch, 1, dim)) for name in names]
    # The grid is the input's at initialisation; afterwards the stored one, which an
    # input of another size resizes instead of failing Flax's shape check.
    stored = (self.get_variable("params", "position_embeddings").shape[1]
              if self.has_variable("params", "position_embeddings")
              else len(names) + height * width)
    positions = self.param("position_embeddings", _EMBEDDING_INIT, (1, stored, dim))
    positions = _position_grid(positions, (height, width), self.pos_antialias, len(names))
    return jnp.concatenate([*leading, tokens], axis=1) + positions.astype(tokens.dtype)


class SelfAttention(nn.Module):
  """Multi-head scaled dot-product attention from separate query, key and value layers."""

  num_heads: int
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    batch, tokens, dim = x.shape

    def heads(name: str) -> jax.Array:
      projected = nn.Dense(dim, use_bias=self.qkv_bias, dtype=x.dtype, name=name)(x)
      return projected.reshape(batch, tokens, self.num_heads, dim // self.num_heads)

    # Softmax in float32 also when the activations are bfloat16.
    context = nn.dot_product_attention(heads("query"), heads("key"), heads("value"),
                                       force_fp32_for_softmax=True)
    return context.astype(x.dtype).reshape(batch, tokens, dim)


class DenseModule(nn.Module):
  """One Dense named `dense` in a module of its own, as HF nests ViTSelfOutput,
  ViTIntermediate and ViTOutput: the Flax path then spells HF's key."""

  features: int

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    return nn.Dense(self.features, dtype=x.dtype, name="dense")(x)


class Attention(nn.Module):
  """HF's ViTAttention: self-attention, then the output projection."""

  num_heads: int
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    context = SelfAttention(self.num_heads, self.qkv_bias, name="attention")(x)
    return DenseModule(x.shape[-1], name="output")(context)


def _layer_norm(epsilon: float, name: str, x: jax.Array) -> jax.Array:
  # Two-pass variance, as PyTorch computes it: E[x^2] - E[x]^2 loses digits.
  return nn.LayerNorm(epsilon=epsilon, dtype=x.dtype, use_fast_variance=False, name=name)(x)


class EncoderLayer(nn.Module):
  """Pre-norm block: x + attention(norm(x)), then x + mlp(norm(x))."""

  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  gelu: str = "exact"
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    h = _layer_norm(self.layer_norm_eps, "layernorm_before", x)
    x = x + Attention(self.num_heads, self.qkv_bias, name="attention")(h)
    h = _layer_norm(self.layer_norm_eps, "layernorm_after", x)
    h = DenseModule(self.mlp_dim, name="intermediate")(h)
    h = nn.gelu(h, approximate=self.gelu == "tanh")
    return x + DenseModule(x.shape[-1], name="output")(h)


class Encoder(nn.Module):
  """`depth` encoder layers named layer_{i}, HF's encoder.layer.{i}."""

  depth: int
  num_heads: int
  mlp_dim: int
  layer_norm_eps: float
  gelu: str = "exact"
  qkv_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    for i in range(self.depth):
      x = EncoderLayer(self.num_heads, self.mlp_dim, self.layer_norm_eps, self.gelu,
                       self.qkv_bias, name=f"layer_{i}")(x)
    return x


class Backbone(nn.Module):
  """HF's ViTModel without its pooler: embeddings, encoder, then the pooled, normalised
  features (the final norm after pooling, see the module docstring)."""

  patch_size: int
  hidden_size: int
  depth: int
  num_heads: int
  mlp_dim: int
  pool: str
  layer_norm_eps: float
  gelu: str
  qkv_bias: bool
  pos_antialias: bool
  distillation_token: bool

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    x = Embeddings(self.hidden_size, self.patch_size, self.pos_antialias,
                   self.distillation_token, name="embeddings")(images)
    x = Encoder(self.depth, self.num_heads, self.mlp_dim, self.layer_norm_eps, self.gelu,
                self.qkv_bias, name="encoder")(x)
    prefix = 1 + self.distillation_token
    pooled = x[:, 0] if self.pool == "cls" else jnp.mean(x[:, prefix:], axis=1)
    return _layer_norm(self.layer_norm_eps, "layernorm", pooled)


class ViT(nn.Module):
  """Vision Transformer classifier; fields as HF's ViTConfig names them where it does.

  Attributes:
    num_classes: the classifier's width.
    patch_size: side of the square patches.
    hidden_size: token width D.
    depth: number of encoder layers.
    num_heads: attention heads (hidden_size must divide by it).
    mlp_dim: the MLP's hidden width.
    pool: "cls" (class token) or "mean" (average of the patch tokens, timm's "avg").
    layer_norm_eps: every LayerNorm's epsilon (HF 1e-12, timm and DeiT 1e-6).
    gelu: "exact" (erf) or "tanh" (the approximation, HF's gelu_new).
    qkv_bias: whether query, key and value have biases.
    pos_antialias: resize position embeddings with antialias=True, as timm's
      dynamic_img_size does, instead of as HF's interpolate_pos_encoding does.
    distillation_token: a DeiT's second token after the class token (HF's DeiT layout).
  """

  num_classes: int
  patch_size: int = 16
  hidden_size: int = 768
  depth: int = 12
  num_heads: int = 12
  mlp_dim: int = 3072
  pool: str = "cls"
  layer_norm_eps: float = 1e-12
  gelu: str = "exact"
  qkv_bias: bool = True
  pos_antialias: bool = False
  distillation_token: bool = False

  @nn.compact
  def __call__(self, images: jax.Array, train: bool = False) -> jax.Array:
    del train  # no dropout: the weights are frozen
    self._check_fields()
    features = Backbone(self.patch_size, self.hidden_size, self.depth, self.num_heads,
                        self.mlp_dim, self.pool, self.layer_norm_eps, self.gelu,
                        self.qkv_bias, self.pos_antialias, self.distillation_token,
                        name="vit")(images)
    return nn.Dense(self.num_classes, dtype=features.dtype, name="classifier")(features)

  def _check_fields(self) -> None:
    if self.pool not in _POOLS:
      raise ValueError(f"ViT pool must be one of {', '.join(_POOLS)}, got {self.pool!r}")
    if self.gelu not in _GELUS:
      raise ValueError(f"ViT gelu must be one of {', '.join(_GELUS)}, got {self.gelu!r}")
    if self.hidden_size % self.num_heads:
      raise ValueError(f"ViT hidden_size {self.hidden_size} is not divisible by "
                       f"num_heads={self.num_heads}")

  def checkpoint_input_shape(self, shapes: Mapping[str, tuple[int, ...]],
                             default: tuple[int, int, int]) -> tuple[int, int, int]:
    """The input a checkpoint's parameter shapes were made for (its import traces the
    model at this size): the position embeddings' square grid times the patch size, and
    the patch conv's input channels. `default` when the checkpoint does not say."""
    projection = shapes.get("vit.embeddings.patch_embeddings.projection.weight")
    positions = shapes.get("vit.embeddings.position_embeddings")
    if projection is None or positions is None or len(projection) != 4 or len(positions) != 3:
      return default
    patches = positions[1] - 1 - self.distillation_token
    side = math.isqrt(max(patches, 0))
    if side == 0 or side * side != patches:
      return default
    return (side * self.patch_size, side * self.patch_size, projection[1])

  def checkpoint_layouts(self) -> dict[str, dict[str, str | tuple[str, ...]]]:
    """Other PyTorch key layouts this model imports: {layout: {their module: ours}}.

    Module names are templates ({i} is a block index); a tuple means their tensor stacks
    ours along rows, in that order. timm names the final norm `norm` under the class-token
    head and `fc_norm` (after pooling, with `norm` an Identity) under the average head.
    Hugging Face's DeiT has our names with deit for vit.
    """
    final_norm = "norm" if self.pool == "cls" else "fc_norm"
    layer = "vit.encoder.layer.{i}"
    deit = {name.replace("vit.", "deit.", 1): name for name in _HF_MODULES}
    return {"Hugging Face DeiT": deit, "timm": {
        "cls_token": "vit.embeddings.cls_token",
        "pos_embed": "vit.embeddings.position_embeddings",
        "patch_embed.proj": "vit.embeddings.patch_embeddings.projection",
        "blocks.{i}.norm1": f"{layer}.layernorm_before",
        "blocks.{i}.attn.qkv": tuple(f"{layer}.attention.attention.{name}"
                                     for name in ("query", "key", "value")),
        "blocks.{i}.attn.proj": f"{layer}.attention.output.dense",
        "blocks.{i}.norm2": f"{layer}.layernorm_after",
        "blocks.{i}.mlp.fc1": f"{layer}.intermediate.dense",
        "blocks.{i}.mlp.fc2": f"{layer}.output.dense",
        final_norm: "vit.layernorm",
        "head": "classifier",
    }}


# Our module names, HF's ViT layout: its DeiT layout has deit for vit.
_HF_MODULES = ("vit.embeddings", "vit.embeddings.patch_embeddings.projection",
               *(f"vit.encoder.layer.{{i}}.{module}" for module in (
                   "layernorm_before", "attention.attention.query", "attention.attention.key",
                   "attention.attention.value", "attention.output.dense", "layernorm_after",
                   "intermediate.dense", "output.dense")),
               "vit.layernorm", "classifier")

# (hidden_size, depth, num_heads, mlp_dim) of the ImageNet models, patch 16.
_SIZES = {"ti16": (192, 12, 3, 768), "s16": (384, 12, 6, 1536), "b16": (768, 12, 12, 3072)}
_FIRST_LAYER = "vit.embeddings.patch_embeddings.projection"

# Registered name -> builder arguments. HF's ViT checkpoints use LayerNorm epsilon 1e-12;
# DeiT (non-distilled DeiT is ViT) and timm use 1e-6, which `layer_norm_eps` in the model
# kwargs also sets for timm ViTs.
_PRESETS = {
    f"{family}_{size}": {"patch_size": 16, "hidden_size": hidden, "depth": depth,
                         "num_heads": heads, "mlp_dim": mlp, "layer_norm_eps": eps}
    for family, eps in (("vit", 1e-12), ("deit", 1e-6))
    for size, (hidden, depth, heads, mlp) in _SIZES.items()}
# A small ViT for 28x28 or 32x32 inputs (7x7 or 8x8 patches), cheap enough to train and
# search on a CPU.
_PRESETS["vit_tiny_p4"] = {"patch_size": 4, "hidden_size": 64, "depth": 6, "num_heads": 4,
                           "mlp_dim": 256, "layer_norm_eps": 1e-6}
# Sizes from model.kwargs alone (a Hugging Face folder's config.json fills them): "vit"
# in HF's ViT layout, "hf_deit" in HF's DeiT layout, with its distillation token.
_PRESETS["vit"] = {}
_PRESETS["hf_deit"] = {"distillation_token": True}

for _name, _kwargs in _PRESETS.items():
  register(ModelSpec(
      name=_name,
      build=functools.partial(ViT, **_kwargs),
      classifier="classifier",
      first_layer=_FIRST_LAYER,
      input_shape=(28, 28, 1) if _name == "vit_tiny_p4" else (224, 224, 3),
      layout_name="Hugging Face",
      feature_blocks=(EncoderLayer,),
  ))

# HF's hidden_act -> our gelu; gelu_new and gelu_pytorch_tanh are the tanh approximation.
_HF_ACTIVATIONS = {"gelu": "exact", "gelu_new": "tanh", "gelu_pytorch_tanh": "tanh"}
# config.json key -> (our builder argument, HF's default when the key is absent).
_HF_FIELDS = {"patch_size": ("patch_size", 16), "hidden_size": ("hidden_size", 768),
              "num_hidden_layers": ("depth", 12), "num_attention_heads": ("num_heads", 12),
              "intermediate_size": ("mlp_dim", 3072), "layer_norm_eps": ("layer_norm_eps", 1e-12),
              "qkv_bias": ("qkv_bias", True)}
# The builder arguments that change what a ViT computes (pos_antialias only matters for
# inputs of another size than the checkpoint's).
_BUILD_FIELDS = ("patch_size", "hidden_size", "depth", "num_heads", "mlp_dim", "pool",
                 "layer_norm_eps", "gelu", "qkv_bias", "distillation_token")
# The classifier heads these folders' weights are for: one Dense on the class token.
_HF_ARCHITECTURES = {"vit": "ViTForImageClassification", "deit": "DeiTForImageClassification"}


def from_hf_config(model_type: str, config: Mapping[str, Any]) -> FolderModel:
  """The ViT a Hugging Face ViTConfig / DeiTConfig (config.json) describes.

  Raises:
    ValueError: a field of the wrong type, an activation other than GELU, or a head other
      than the single class-token classifier (DeiT's distilled two-head model).
  """
  architectures = config.get("architectures") or [_HF_ARCHITECTURES[model_type]]
  if architectures != [_HF_ARCHITECTURES[model_type]]:
    raise ValueError(f"architectures {architectures} are not supported for model_type "
                     f"{model_type!r}: only {_HF_ARCHITECTURES[model_type]} (one classifier on "
                     "the class token) imports")
  kwargs = {}
  for key, (ours, default) in _HF_FIELDS.items():
    value = config.get(key, default)
    wanted = type(default)
    if wanted is float and isinstance(value, int) and not isinstance(value, bool):
      value = float(value)
    if not isinstance(value, wanted) or (wanted is int and (isinstance(value, bool)
                                                            or value < 1)):
      kind = "a positive int" if wanted is int else f"a {wanted.__name__}"
      raise ValueError(f"{key}={value!r} is not {kind}")
    kwargs[ours] = value
  activation = config.get("hidden_act", "gelu")
  if activation not in _HF_ACTIVATIONS:
    raise ValueError(f"hidden_act {activation!r} is not supported; supported: "
                     f"{', '.join(_HF_ACTIVATIONS)}")
  kwargs["gelu"] = _HF_ACTIVATIONS[activation]
  kwargs["distillation_token"] = model_type == "deit"
  generic = "hf_deit" if model_type == "deit" else "vit"
  presets = [name for name, preset in _PRESETS.items()
             if name != generic and _with_defaults(preset) == _with_defaults(kwargs)]
  return FolderModel(names=(*presets, generic), kwargs=kwargs)


def _with_defaults(kwargs: Mapping[str, Any]) -> dict[str, Any]:
  """Builder arguments with ViT's defaults for those not given, so equal models compare
  equal however they were written."""
  defaults = {field.name: field.default for field in dataclasses.fields(ViT)
              if field.name in _BUILD_FIELDS}
  return {**defaults, **kwargs}


for _model_type in _HF_ARCHITECTURES:
  register_folder_reader(_model_type, functools.partial(from_hf_config, _model_type))
