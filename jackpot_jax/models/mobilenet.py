"""MobileNet-V2 (torchvision's layout) and MobileNet-V1 (the common public layout).

MobileNet-V2, width 1.0, as torchvision builds it: features.0.{0,1} (3x3 stride-2
conv + BN, ReLU6); features.{1..17} inverted residuals whose `conv` holds
[conv.0.{0,1} 1x1 expansion, when the ratio is not 1], conv.{k}.{0,1} 3x3 depthwise,
conv.{k+1} 1x1 projection, conv.{k+2} BN; features.18.{0,1} 1x1 conv to 1280;
classifier.1 Linear (classifier.0 is a Dropout, left out as for VGG).

MobileNet-V1 has no torchvision model. The layout here is the one most public PyTorch
ImageNet checkpoints use: a Sequential `model` whose model.0.{0,1} is the 3x3 stride-2
stem (conv + BN, ReLU) and model.{1..13}.{0,1,3,4} are depthwise-separable blocks
(3x3 depthwise conv, BN, ReLU, 1x1 conv, BN, ReLU), then a 7x7 average pool and `fc`.
The pool is global here, which is the same at 224x224 and also works on small inputs.
Every conv has bias=False.
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jackpot_jax.models.layers import Conv, Dense, batch_norm, global_avg_pool
from jackpot_jax.models.registry import ModelSpec, register

# (expansion ratio, output channels, repeats, first stride), torchvision's table.
INVERTED_RESIDUAL_SETTINGS = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2),
                              (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1))

# (output channels, stride) of MobileNet-V1's depthwise-separable blocks.
DEPTHWISE_SEPARABLE_SETTINGS = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
                                (512, 1), (512, 1), (512, 1), (512, 1), (512, 1),
                                (1024, 2), (1024, 1))


def _conv_bn(x: jax.Array, train: bool, conv_name: str, bn_name: str, features: int,
             kernel: int, stride: int = 1, groups: int = 1) -> jax.Array:
  """Conv (bias-free, 'same' padding as PyTorch writes it) followed by BN.

  Called from a parent's compact method, so both layers are the parent's children and
  their names can carry the PyTorch indices flat ("features_0_0").
  """
  x = Conv(features, (kernel, kernel), (stride, stride), padding=(kernel - 1) // 2,
           groups=groups, name=conv_name)(x)
  return batch_norm(train, bn_name)(x)


class InvertedResidual(nn.Module):
  """torchvision's InvertedResidual; the residual is added when shapes allow."""

  out_features: int
  stride: int
  expand_ratio: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool) -> jax.Array:
    in_features = x.shape[-1]
    hidden = int(round(in_features * self.expand_ratio))
    out = x
    index = 0
    if self.expand_ratio != 1:
      out = nn.relu6(_conv_bn(out, train, "conv_0_0", "conv_0_1", hidden, 1))
      index = 1
    out = nn.relu6(_conv_bn(out, train, f"conv_{index}_0", f"conv_{index}_1", hidden, 3,
                            self.stride, groups=hidden))
    out = _conv_bn(out, train, f"conv_{index + 1}", f"conv_{index + 2}", self.out_features, 1)
    if self.stride == 1 and in_features == self.out_features:
      out = out + x
    return out


class MobileNetV2(nn.Module):
  """torchvision MobileNetV2 with width multiplier 1.0."""

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.relu6(_conv_bn(x, train, "features_0_0", "features_0_1", 32, 3, 2))
    index = 1
    for ratio, features, repeats, stride in INVERTED_RESIDUAL_SETTINGS:
      for i in range(repeats):
        x = InvertedResidual(features, stride if i == 0 else 1, ratio,
                             name=f"features_{index}")(x, train)
        index += 1
    x = nn.relu6(_conv_bn(x, train, f"features_{index}_0", f"features_{index}_1", 1280, 1))
    x = global_avg_pool(x)
    return Dense(self.num_classes, name="classifier_1")(x)


class MobileNetV1(nn.Module):
  """MobileNet-V1 (Howard et al. 2017), width 1.0, in the `model.{i}` / `fc` layout."""

  num_classes: int

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = nn.relu(_conv_bn(x, train, "model_0_0", "model_0_1", 32, 3, 2))
    for index, (features, stride) in enumerate(DEPTHWISE_SEPARABLE_SETTINGS, start=1):
      block = f"model_{index}"
      x = nn.relu(_conv_bn(x, train, f"{block}_0", f"{block}_1", x.shape[-1], 3, stride,
                           groups=x.shape[-1]))
      x = nn.relu(_conv_bn(x, train, f"{block}_3", f"{block}_4", features, 1))
    x = global_avg_pool(x)
    return Dense(self.num_classes, name="fc")(x)


register(ModelSpec(
    name="mobilenet_v2",
    build=MobileNetV2,
    classifier="classifier.1",
    first_layer="features.0.0",
    input_shape=(224, 224, 3),
    layout_name="torchvision",
    feature_blocks=(InvertedResidual,),
))

register(ModelSpec(
    name="mobilenet_v1",
    build=MobileNetV1,
    classifier="fc",
    first_layer="model.0.0",
    input_shape=(224, 224, 3),
))
