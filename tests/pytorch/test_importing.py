"""Every supported PyTorch layout imports into a Flax model with the same logits."""

from __future__ import annotations

from functools import partial

import numpy as np
import pytest
import torch

from jackpot_jax.pytorch import import_torch
from jackpot_jax.models.torchvision_vgg import (VGG11_LAYOUT, VGG16_LAYOUT, VGG19_LAYOUT,
                                                adaptive_avg_pool)
from jackpot_jax.models.vgg_cifar import VGG19_LAYOUT as CIFAR_VGG19_LAYOUT
from torch_reference.torch_models import (AuthorsCifarVGG, CifarResNet, MobileNetV1,
                                              TorchvisionMobileNetV2, TorchvisionVGG,
                                              randomize_batch_norm, torchvision_resnet)

NUM_CLASSES = 7
TOLERANCE = 1e-4
VGG_HIDDEN = 16
VGG_KWARGS = {"hidden_features": VGG_HIDDEN}

# (registry name, builder kwargs, PyTorch reference in the checkpoint's layout). Small
# classifiers and 32x32 inputs keep each case to a few seconds on CPU.
LAYOUTS = {
    "torchvision_resnet18": ("resnet18", {}, partial(torchvision_resnet, 18, NUM_CLASSES)),
    "torchvision_resnet34": ("resnet34", {}, partial(torchvision_resnet, 34, NUM_CLASSES)),
    "torchvision_resnet50": ("resnet50", {}, partial(torchvision_resnet, 50, NUM_CLASSES)),
    "authors_resnet50_conv_fc": (
        "resnet50", {}, partial(torchvision_resnet, 50, NUM_CLASSES, fc_as_conv=True)),
    "torchvision_vgg11_bn": (
        "vgg11_bn", VGG_KWARGS, partial(TorchvisionVGG, VGG11_LAYOUT, NUM_CLASSES, VGG_HIDDEN)),
    "torchvision_vgg16_bn": (
        "vgg16_bn", VGG_KWARGS, partial(TorchvisionVGG, VGG16_LAYOUT, NUM_CLASSES, VGG_HIDDEN)),
    "torchvision_vgg19_bn": (
        "vgg19_bn", VGG_KWARGS, partial(TorchvisionVGG, VGG19_LAYOUT, NUM_CLASSES, VGG_HIDDEN)),
    "torchvision_mobilenet_v2": ("mobilenet_v2", {}, partial(TorchvisionMobileNetV2, NUM_CLASSES)),
    "mobilenet_v1": ("mobilenet_v1", {}, partial(MobileNetV1, NUM_CLASSES)),
    "authors_cifar_vgg19": (
        "vgg19", {}, partial(AuthorsCifarVGG, CIFAR_VGG19_LAYOUT, NUM_CLASSES)),
    "cifar_resnet20_linear": ("resnet20", {}, partial(CifarResNet, 20, NUM_CLASSES)),
    "authors_cifar_resnet32_conv_fc": (
        "resnet32", {"width": 2}, partial(CifarResNet, 32, NUM_CLASSES, width=2, classifier="fc")),
}


@pytest.fixture(scope="module", autouse=True)
def flush_denormals():
  # Denormals take slow paths and differ between backends; flush them like XLA does.
  torch.set_flush_denormal(True)
  yield
  torch.set_flush_denormal(False)


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
def test_imported_model_matches_pytorch_logits(layout):
  model_name, model_kwargs, build_reference = LAYOUTS[layout]
  torch.manual_seed(0)
  reference = randomize_batch_norm(build_reference())
  images = torch.randn(2, 3, 32, 32)
  with torch.no_grad():
    expected = reference(images).numpy()

  imported = import_torch(reference.state_dict(), model_name, NUM_CLASSES,
                          model_kwargs=model_kwargs)
  logits = imported.model.apply(imported.variables, images.permute(0, 2, 3, 1).numpy(),
                                train=False)

  assert imported.scores is None and imported.masks is None
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=TOLERANCE)


@pytest.mark.parametrize("in_size", [1, 5, 7, 10, 14])
def test_adaptive_avg_pool_matches_pytorch(in_size):
  images = torch.randn(2, 3, in_size, in_size + 1)
  expected = torch.nn.AdaptiveAvgPool2d((7, 7))(images).permute(0, 2, 3, 1).numpy()
  pooled = adaptive_avg_pool(images.permute(0, 2, 3, 1).numpy(), (7, 7))
  np.testing.assert_allclose(np.asarray(pooled), expected, rtol=0, atol=1e-6)


def test_grayscale_checkpoint_imports_with_one_input_channel():
  reference = randomize_batch_norm(CifarResNet(20, NUM_CLASSES, in_channels=1))
  images = torch.randn(2, 1, 8, 8)
  with torch.no_grad():
    expected = reference(images).numpy()

  imported = import_torch(reference.state_dict(), "resnet20", NUM_CLASSES)
  logits = imported.model.apply(imported.variables, images.permute(0, 2, 3, 1).numpy(),
                                train=False)

  assert imported.variables["params"]["conv1"]["kernel"].shape == (3, 3, 1, 16)
  np.testing.assert_allclose(np.asarray(logits), expected, rtol=0, atol=TOLERANCE)
