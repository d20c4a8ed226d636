"""VGG-19 with BatchNorm in the paper's CIFAR configuration.

features.{i}: conv3x3 (no bias) + BN + ReLU stacks with 2x2 max-pools; the classifier
is one layer on the 512-d feature (the authors store it as a 1x1 conv with bias, which
the importer maps onto this Dense layer).
"""

from __future__ import annotations

import flax.linen as nn
import jax

from jackpot_jax.models.layers import Conv, Dense, batch_norm, global_avg_pool, max_pool
from jackpot_jax.models.registry import ModelSpec, register

VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def vgg_features(x: jax.Array, layout: tuple, train: bool, use_bias: bool) -> jax.Array:
  """The `features.{i}` stack: conv3x3 + BN + ReLU per number, a 2x2 max-pool per "M".

  Indices follow nn.Sequential's (conv i, BN i+1, ReLU i+2, pool one index), so the
  Flax names are the PyTorch keys. Shared with torchvision's VGG-BN (convs with bias).
  """
  index = 0
  for item in layout:
    if item == "M":
      x = max_pool(x, 2, 2)
      index += 1
      continue
    x = Conv(item, (3, 3), padding=1, use_bias=use_bias, name=f"features_{index}")(x)
    x = nn.relu(batch_norm(train, f"features_{index + 1}")(x))
    index += 3
  return x


class CifarVGG(nn.Module):
  num_classes: int
  layout: tuple = VGG19_LAYOUT

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = vgg_features(x, self.layout, train, use_bias=False)
    # On 32x32 inputs the feature map is 1x1 here, so the mean is the identity.
    x = global_avg_pool(x)
    return Dense(self.num_classes, name="classifier")(x)


register(ModelSpec(
    name="vgg19",
    build=CifarVGG,
    classifier="classifier",
    first_layer="features.0",
    input_shape=(32, 32, 3),
))
