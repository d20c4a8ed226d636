"""CIFAR-style ResNet-20/32/56 with option-A (zero-padding) shortcuts.

Key layout of the widely used CIFAR ResNet checkpoints: conv1, bn1,
layer{1,2,3}.{i}.{conv1,bn1,conv2,bn2}, linear. The paper's ResNet-32 is `width=2`
(32/64/128 channels); the authors' checkpoints name the classifier `fc` and store it
as a 1x1 convolution, which the importer maps onto `linear`.
"""

from __future__ import annotations

import functools
from typing import Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

from jackpot_jax.models.layers import Conv, Dense, batch_norm, global_avg_pool
from jackpot_jax.models.registry import ModelSpec, register


def option_a_shortcut(x: jax.Array, planes: int, stride: int, train: bool) -> jax.Array:
  """Subsample spatially and zero-pad channels, as option A in He et al. 2016."""
  del train  # parameter-free
  if stride != 1:
    x = x[:, ::stride, ::stride, :]
  extra = planes - x.shape[-1]
  if extra:
    x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (extra // 2, extra - extra // 2)))
  return x


def projection_shortcut(x: jax.Array, planes: int, stride: int, train: bool) -> jax.Array:
  """torchvision's shortcut: downsample.0 (1x1 conv) and downsample.1 (BN)."""
  x = Conv(planes, (1, 1), (stride, stride), name="downsample_0")(x)
  return batch_norm(train, "downsample_1")(x)


class BasicBlock(nn.Module):
  """Two 3x3 convs with BN; the shortcut (option A or projection) applies where the
  shape changes. Shared by the CIFAR ResNets and torchvision's ResNet-18/34."""

  planes: int
  stride: int = 1
  shortcut: Callable[[jax.Array, int, int, bool], jax.Array] = option_a_shortcut

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out = Conv(self.planes, (3, 3), (self.stride,) * 2, padding=1, name="conv1")(x)
    out = nn.relu(batch_norm(train, "bn1")(out))
    out = Conv(self.planes, (3, 3), padding=1, name="conv2")(out)
    out = batch_norm(train, "bn2")(out)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.planes:
      shortcut = self.shortcut(x, self.planes, self.stride, train)
    return nn.relu(out + shortcut)


class CifarResNet(nn.Module):
  """ResNet-(6n+2) for 32x32-ish inputs; any input size and channel count works."""

  depth: int
  num_classes: int
  width: int = 1

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    if (self.depth - 2) % 6:
      raise ValueError(f"CIFAR ResNet depth must be 6n+2, got {self.depth}")
    blocks = (self.depth - 2) // 6
    widths = [16 * self.width, 32 * self.width, 64 * self.width]
    x = Conv(widths[0], (3, 3), padding=1, name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    for stage, planes in enumerate(widths):
      for i in range(blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        x = BasicBlock(planes, stride, name=f"layer{stage + 1}_{i}")(x, train)
    x = global_avg_pool(x)
    return Dense(self.num_classes, name="linear")(x)


# The CIFAR ResNets of He et al. (2016), and ResNet-8, the smallest (MLPerf Tiny's).
DEPTHS = (8, 14, 20, 32, 44, 56, 110)

for _depth in DEPTHS:
  register(ModelSpec(
      name=f"resnet{_depth}",
      build=functools.partial(CifarResNet, _depth),
      classifier="linear",
      first_layer="conv1",
      input_shape=(32, 32, 3),
      torch_aliases={"linear": ("fc",)},
      feature_blocks=(BasicBlock,),
  ))
