"""VGG-11/16/19 with BatchNorm in torchvision's layout (vgg11_bn, vgg16_bn, vgg19_bn).

Key layout: features.{i} (3x3 conv with bias, BN, ReLU; a max-pool takes one index),
a 7x7 adaptive average pool, classifier.{0,3,6} Linear layers. PyTorch flattens the
pooled NCHW map, so the model transposes to NCHW before flattening and classifier.0's
weight maps onto the Dense kernel by a plain transpose.

torchvision's classifier.{2,5} are Dropout(0.5). They are left out: they have no
parameters and do nothing in evaluation, and the mask search (which runs in training
mode) would otherwise need a dropout RNG threaded through every step. A search on a
VGG therefore sees the classifier without dropout noise.
"""

from __future__ import annotations

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from jackpot_jax.models.layers import Dense
from jackpot_jax.models.vgg_cifar import vgg_features
from jackpot_jax.models.registry import ModelSpec, register

VGG11_LAYOUT = (64, "M", 128, "M", 256, 256, "M", 512, 512, "M", 512, 512, "M")
VGG16_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                512, 512, 512, "M", 512, 512, 512, "M")
VGG19_LAYOUT = (64, 64, "M", 128, 128, "M", 256, 256, 256, 256, "M",
                512, 512, 512, 512, "M", 512, 512, 512, 512, "M")


def _adaptive_pool_weights(in_size: int, out_size: int) -> np.ndarray:
  """(out_size, in_size) averaging matrix of PyTorch's adaptive average pooling.

  Output bin i averages inputs floor(i * in / out) .. ceil((i + 1) * in / out) - 1, so
  bins may overlap or, for a smaller input, repeat an input (1x1 -> 7x7 copies it).
  """
  weights = np.zeros((out_size, in_size), np.float32)
  for i in range(out_size):
    start = (i * in_size) // out_size
    end = -(-((i + 1) * in_size) // out_size)
    weights[i, start:end] = 1.0 / (end - start)
  return weights


def adaptive_avg_pool(x: jax.Array, output_size: tuple[int, int]) -> jax.Array:
  """PyTorch's AdaptiveAvgPool2d on an NHWC array, for any input size."""
  if x.shape[1:3] == tuple(output_size):
    return x
  rows = _adaptive_pool_weights(x.shape[1], output_size[0])
  cols = _adaptive_pool_weights(x.shape[2], output_size[1])
  # HIGHEST keeps the averaging in full fp32 on accelerators that default to TF32.
  return jnp.einsum("nhwc,oh,pw->nopc", x, rows.astype(x.dtype), cols.astype(x.dtype),
                    precision=lax.Precision.HIGHEST)


class TorchvisionVGG(nn.Module):
  """torchvision VGG with BN; `hidden_features` (4096 in torchvision) shrinks test models."""

  num_classes: int
  layout: tuple = VGG16_LAYOUT
  hidden_features: int = 4096

  @nn.compact
  def __call__(self, x: jax.Array, train: bool = False) -> jax.Array:
    x = vgg_features(x, self.layout, train, use_bias=True)
    x = adaptive_avg_pool(x, (7, 7))
    # NCHW flatten order, as torch.flatten sees it, so classifier.0 needs no permutation.
    x = jnp.transpose(x, (0, 3, 1, 2)).reshape(x.shape[0], -1)
    x = nn.relu(Dense(self.hidden_features, name="classifier_0")(x))
    x = nn.relu(Dense(self.hidden_features, name="classifier_3")(x))
    return Dense(self.num_classes, name="classifier_6")(x)


for _name, _layout in (("vgg11_bn", VGG11_LAYOUT), ("vgg16_bn", VGG16_LAYOUT),
                       ("vgg19_bn", VGG19_LAYOUT)):
  register(ModelSpec(
      name=_name,
      build=functools.partial(TorchvisionVGG, layout=_layout),
      classifier="classifier.6",
      first_layer="features.0",
      input_shape=(224, 224, 3),
      layout_name="torchvision",
  ))
