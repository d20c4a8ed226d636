"""ResNet-18/34/50 in torchvision's layout (ImageNet stem, v1.5 bottleneck).

Key layout: conv1, bn1, layer{1..4}.{i}.{conv1,bn1,conv2,bn2[,conv3,bn3]},
layer{k}.0.downsample.{0,1} (1x1 conv + BN) where the shape changes, fc. Every conv
has bias=False as in torchvision. The bottleneck strides its 3x3 conv2 (torchvision's
"v1.5"), which is also the layout of the lottery-jackpots authors' ResNet-50; their
checkpoints store fc as a 1x1 conv with bias, which the importer maps onto `fc`.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax

from jackpot_jax.models.layers import Conv, Dense, batch_norm, global_avg_pool, max_pool
from jackpot_jax.models.cifar_resnet import BasicBlock, projection_shortcut
from jackpot_jax.models.registry import ModelSpec, register

# ResNet-18/34's block: the CIFAR block with torchvision's projection shortcut.
_BASIC_BLOCK = functools.partial(BasicBlock, shortcut=projection_shortcut)


class Bottleneck(nn.Module):
  """1x1 reduce, 3x3 (strided), 1x1 expand by 4; ResNet-50."""

  planes: int
  stride: int = 1

  expansion = 4

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    out_features = self.planes * self.expansion
    out = Conv(self.planes, (1, 1), name="conv1")(x)
    out = nn.relu(batch_norm(train, "bn1")(out))
    out = Conv(self.planes, (3, 3), (self.stride,) * 2, padding=1, name="conv2")(out)
    out = nn.relu(batch_norm(train, "bn2")(out))
    out = Conv(out_features, (1, 1), name="conv3")(out)
    out = batch_norm(train, "bn3")(out)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != out_features:
      shortcut = projection_shortcut(x, out_features, self.stride, train)
    return nn.relu(out + shortcut)


class TorchvisionResNet(nn.Module):
  """torchvision ResNet; any input size of at least 32x32 works (the pool is global)."""

  block: type[nn.Module]
  stage_sizes: tuple[int, int, int, int]
  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = Conv(64, (7, 7), (2, 2), padding=3, name="conv1")(x)
    x = nn.relu(batch_norm(train, "bn1")(x))
    x = max_pool(x, 3, 2, padding=1)
    for stage, blocks in enumerate(self.stage_sizes):
      planes = 64 * 2**stage
      for i in range(blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        x = self.block(planes, stride, name=f"layer{stage + 1}_{i}")(x, train)
    x = global_avg_pool(x)
    return Dense(self.num_classes, name="fc")(x)


_ARCHITECTURES = {
    "resnet18": (_BASIC_BLOCK, (2, 2, 2, 2)),
    "resnet34": (_BASIC_BLOCK, (3, 4, 6, 3)),
    "resnet50": (Bottleneck, (3, 4, 6, 3)),
}

for _name, (_block, _stage_sizes) in _ARCHITECTURES.items():
  register(ModelSpec(
      name=_name,
      build=functools.partial(TorchvisionResNet, _block, _stage_sizes),
      classifier="fc",
      first_layer="conv1",
      input_shape=(224, 224, 3),
      layout_name="torchvision",
      feature_blocks=(BasicBlock, Bottleneck),
  ))
