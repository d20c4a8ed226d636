"""Flax layers with PyTorch's semantics (explicit conv padding, BatchNorm defaults).

They know nothing of masks: `wrapper.masked` multiplies their kernels by the masks
from outside, as it does for any other Flax module.
"""

from __future__ import annotations

from typing import Callable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from jax import lax

# PyTorch's default initialisers are irrelevant here (weights come from checkpoints),
# but random init must still be sensible for tests and from-scratch smoke runs.
_default_kernel_init = nn.initializers.variance_scaling(2.0, "fan_in", "normal")


def explicit_padding(padding: int | Sequence[int]) -> tuple[tuple[int, int], ...]:
  """A Conv's `padding` (one int, or one per spatial axis) as XLA's (low, high) pairs."""
  pad = (padding, padding) if isinstance(padding, int) else tuple(padding)
  return tuple((p, p) for p in pad)


class Conv(nn.Module):
  """2-D convolution, NHWC/HWIO, with PyTorch's explicit symmetric padding.

  Explicit padding (never 'SAME') keeps stride-2 outputs aligned with PyTorch's.
  """

  features: int
  kernel_size: Sequence[int]
  strides: Sequence[int] = (1, 1)
  padding: int | Sequence[int] = 0
  groups: int = 1
  use_bias: bool = False

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kh, kw = self.kernel_size
    in_features = x.shape[-1]
    if in_features % self.groups:
      raise ValueError(f"{self.name}: {in_features} input channels not divisible by groups={self.groups}")
    kernel = self.param(
        "kernel", _default_kernel_init, (kh, kw, in_features // self.groups, self.features))
    y = lax.conv_general_dilated(
        x, kernel.astype(x.dtype),
        window_strides=tuple(self.strides),
        padding=explicit_padding(self.padding),
        dimension_numbers=("NHWC", "HWIO", "NHWC"),
        feature_group_count=self.groups)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
    return y


class Dense(nn.Module):
  """Fully connected layer, kernel (in, out) as Flax stores it."""

  features: int
  use_bias: bool = True

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    kernel = self.param("kernel", nn.initializers.lecun_normal(), (x.shape[-1], self.features))
    y = x @ kernel.astype(x.dtype)
    if self.use_bias:
      y = y + self.param("bias", nn.initializers.zeros, (self.features,)).astype(x.dtype)
    return y


# Flax's momentum is the weight of the old running statistics (PyTorch's 0.1 is 0.9 here).
BN_MOMENTUM = 0.9


def batch_norm(train: bool, name: str) -> Callable[[jax.Array], jax.Array]:
  """BatchNorm with PyTorch's defaults: momentum 0.1 there is 0.9 here, epsilon 1e-5.

  In training mode the batch statistics of the whole (possibly sharded) batch are used,
  which under jit with a data-sharded batch is synchronised BN by construction. The
  output keeps the input's dtype (bfloat16 activations stay bfloat16; Flax reduces the
  statistics in float32 and keeps them float32), so a bfloat16 input makes the whole
  network compute in bfloat16 while frozen weights, scores and statistics stay float32.
  """

  def normalize(x: jax.Array) -> jax.Array:
    return nn.BatchNorm(use_running_average=not train, momentum=BN_MOMENTUM, epsilon=1e-5,
                        dtype=x.dtype, name=name)(x)

  return normalize


def max_pool(x: jax.Array, window: int, stride: int, padding: int = 0) -> jax.Array:
  """PyTorch MaxPool2d: explicit padding with -inf."""
  return nn.max_pool(x, (window, window), (stride, stride),
                     padding=((padding, padding), (padding, padding)))


def global_avg_pool(x: jax.Array) -> jax.Array:
  return jnp.mean(x, axis=(1, 2))
