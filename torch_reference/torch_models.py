"""PyTorch reference modules in the key layouts jackpot_jax imports and exports.

torchvision does not import beside the pinned torch wheel, so the layouts are written
here: they define what a checkpoint of each supported architecture looks like, and they
are the modules an exported jackpot must load into with strict=True.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class CifarBasicBlock(nn.Module):
  """CIFAR ResNet block with an option-A (subsample + zero-pad) shortcut."""

  def __init__(self, in_planes: int, planes: int, stride: int = 1):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.stride = stride
    self.extra = planes - in_planes

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = F.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x
    if self.stride != 1:
      shortcut = shortcut[:, :, ::self.stride, ::self.stride]
    if self.extra:
      shortcut = F.pad(shortcut, (0, 0, 0, 0, self.extra // 2, self.extra - self.extra // 2))
    return F.relu(out + shortcut)


class CifarResNet(nn.Module):
  """ResNet-(6n+2): conv1, bn1, layer{1,2,3}.{i}, linear (or fc as a 1x1 conv)."""

  def __init__(self, depth: int, num_classes: int = 10, width: int = 1, in_channels: int = 3,
               classifier: str = "linear"):
    super().__init__()
    blocks = (depth - 2) // 6
    widths = [16 * width, 32 * width, 64 * width]
    self.conv1 = nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(widths[0])
    in_planes = widths[0]
    for stage, planes in enumerate(widths):
      layers = []
      for i in range(blocks):
        layers.append(CifarBasicBlock(in_planes, planes, 2 if stage > 0 and i == 0 else 1))
        in_planes = planes
      setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
    self.classifier_kind = classifier
    if classifier == "linear":
      self.linear = nn.Linear(in_planes, num_classes)
    else:
      # The lottery-jackpots authors' layout: the classifier is a 1x1 conv named fc.
      self.fc = nn.Conv2d(in_planes, num_classes, 1, bias=True)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.relu(self.bn1(self.conv1(x)))
    x = self.layer3(self.layer2(self.layer1(x)))
    if self.classifier_kind == "linear":
      return self.linear(x.mean(dim=(2, 3)))
    return self.fc(x.mean(dim=(2, 3), keepdim=True)).flatten(1)


def _last_width(layout: tuple) -> int:
  return [item for item in layout if item != "M"][-1]


def _vgg_features(layout: tuple, in_channels: int, conv_bias: bool) -> nn.Sequential:
  """conv3x3 + BN + ReLU per width, MaxPool2d(2) per "M": the features.{i} indices."""
  layers: list[nn.Module] = []
  for item in layout:
    if item == "M":
      layers.append(nn.MaxPool2d(2, 2))
      continue
    layers += [nn.Conv2d(in_channels, item, 3, padding=1, bias=conv_bias), nn.BatchNorm2d(item),
               nn.ReLU(inplace=True)]
    in_channels = item
  return nn.Sequential(*layers)


class AuthorsCifarVGG(nn.Module):
  """The lottery-jackpots authors' CIFAR VGG: features.{i}, classifier a 1x1 conv with bias."""

  def __init__(self, layout: tuple, num_classes: int = 10, in_channels: int = 3):
    super().__init__()
    self.features = _vgg_features(layout, in_channels, conv_bias=False)
    self.classifier = nn.Conv2d(_last_width(layout), num_classes, 1, bias=True)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    # The spatial map is 1x1 on 32x32 inputs; the mean makes other sizes work too.
    x = self.features(x).mean(dim=(2, 3), keepdim=True)
    return self.classifier(x).flatten(1)


class TorchvisionVGG(nn.Module):
  """torchvision's VGG with BN (features, avgpool, classifier.{0..6}) for any `layout`."""

  def __init__(self, layout: tuple, num_classes: int = 1000, hidden_features: int = 4096):
    super().__init__()
    self.features = _vgg_features(layout, 3, conv_bias=True)
    self.avgpool = nn.AdaptiveAvgPool2d((7, 7))
    self.classifier = nn.Sequential(
        nn.Linear(_last_width(layout) * 7 * 7, hidden_features), nn.ReLU(True), nn.Dropout(),
        nn.Linear(hidden_features, hidden_features), nn.ReLU(True), nn.Dropout(),
        nn.Linear(hidden_features, num_classes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


class TorchvisionBasicBlock(nn.Module):
  expansion = 1

  def __init__(self, in_planes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 3, stride, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.relu = nn.ReLU(inplace=True)
    self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.bn2(self.conv2(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(out + shortcut)


class TorchvisionBottleneck(nn.Module):
  """torchvision's v1.5 bottleneck: the stride sits on the 3x3 conv2."""

  expansion = 4

  def __init__(self, in_planes: int, planes: int, stride: int = 1,
               downsample: nn.Module | None = None):
    super().__init__()
    self.conv1 = nn.Conv2d(in_planes, planes, 1, bias=False)
    self.bn1 = nn.BatchNorm2d(planes)
    self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)
    self.bn2 = nn.BatchNorm2d(planes)
    self.conv3 = nn.Conv2d(planes, planes * self.expansion, 1, bias=False)
    self.bn3 = nn.BatchNorm2d(planes * self.expansion)
    self.relu = nn.ReLU(inplace=True)
    self.downsample = downsample

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    out = self.relu(self.bn1(self.conv1(x)))
    out = self.relu(self.bn2(self.conv2(out)))
    out = self.bn3(self.conv3(out))
    shortcut = x if self.downsample is None else self.downsample(x)
    return self.relu(out + shortcut)


class TorchvisionResNet(nn.Module):
  """torchvision's ResNet key layout; `fc_as_conv` gives the authors' 1x1-conv fc."""

  def __init__(self, block: type[nn.Module], stage_sizes: tuple, num_classes: int = 1000,
               fc_as_conv: bool = False):
    super().__init__()
    self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False)
    self.bn1 = nn.BatchNorm2d(64)
    self.relu = nn.ReLU(inplace=True)
    self.maxpool = nn.MaxPool2d(3, 2, 1)
    in_planes = 64
    for stage, blocks in enumerate(stage_sizes):
      planes = 64 * 2**stage
      layers = []
      for i in range(blocks):
        stride = 2 if stage > 0 and i == 0 else 1
        downsample = None
        if stride != 1 or in_planes != planes * block.expansion:
          downsample = nn.Sequential(
              nn.Conv2d(in_planes, planes * block.expansion, 1, stride, bias=False),
              nn.BatchNorm2d(planes * block.expansion))
        layers.append(block(in_planes, planes, stride, downsample))
        in_planes = planes * block.expansion
      setattr(self, f"layer{stage + 1}", nn.Sequential(*layers))
    self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
    self.fc_as_conv = fc_as_conv
    if fc_as_conv:
      self.fc = nn.Conv2d(in_planes, num_classes, 1, bias=True)
    else:
      self.fc = nn.Linear(in_planes, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
    x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
    x = self.avgpool(x)
    if self.fc_as_conv:
      return self.fc(x).flatten(1)
    return self.fc(torch.flatten(x, 1))


def torchvision_resnet(depth: int, num_classes: int = 1000, fc_as_conv: bool = False
                       ) -> TorchvisionResNet:
  """ResNet-18/34/50 in torchvision's layout."""
  blocks = {18: (TorchvisionBasicBlock, (2, 2, 2, 2)), 34: (TorchvisionBasicBlock, (3, 4, 6, 3)),
            50: (TorchvisionBottleneck, (3, 4, 6, 3))}
  block, stage_sizes = blocks[depth]
  return TorchvisionResNet(block, stage_sizes, num_classes, fc_as_conv)


def _conv_bn_act(in_channels: int, out_channels: int, kernel: int, stride: int = 1,
                 groups: int = 1, activation: type[nn.Module] = nn.ReLU6) -> nn.Sequential:
  """torchvision's Conv2dNormActivation: children 0 (conv), 1 (BN), 2 (activation)."""
  return nn.Sequential(
      nn.Conv2d(in_channels, out_channels, kernel, stride, (kernel - 1) // 2, groups=groups,
                bias=False),
      nn.BatchNorm2d(out_channels), activation(inplace=True))


class TorchvisionInvertedResidual(nn.Module):
  def __init__(self, in_channels: int, out_channels: int, stride: int, expand_ratio: int):
    super().__init__()
    hidden = int(round(in_channels * expand_ratio))
    self.use_res_connect = stride == 1 and in_channels == out_channels
    layers: list[nn.Module] = []
    if expand_ratio != 1:
      layers.append(_conv_bn_act(in_channels, hidden, 1))
    layers += [_conv_bn_act(hidden, hidden, 3, stride, groups=hidden),
               nn.Conv2d(hidden, out_channels, 1, bias=False), nn.BatchNorm2d(out_channels)]
    self.conv = nn.Sequential(*layers)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return x + self.conv(x) if self.use_res_connect else self.conv(x)


class TorchvisionMobileNetV2(nn.Module):
  """torchvision's MobileNetV2 (width 1.0): features.{0..18}, classifier.{0,1}."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    settings = ((1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1),
                (6, 160, 3, 2), (6, 320, 1, 1))
    layers: list[nn.Module] = [_conv_bn_act(3, 32, 3, 2)]
    in_channels = 32
    for ratio, out_channels, repeats, stride in settings:
      for i in range(repeats):
        layers.append(TorchvisionInvertedResidual(in_channels, out_channels,
                                                  stride if i == 0 else 1, ratio))
        in_channels = out_channels
    layers.append(_conv_bn_act(in_channels, 1280, 1))
    self.features = nn.Sequential(*layers)
    self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(1280, num_classes))

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = F.adaptive_avg_pool2d(self.features(x), (1, 1))
    return self.classifier(torch.flatten(x, 1))


class MobileNetV1(nn.Module):
  """MobileNet-V1 in the common public layout: model.{0..13} Sequentials, fc."""

  def __init__(self, num_classes: int = 1000):
    super().__init__()
    settings = ((64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2), (512, 1), (512, 1),
                (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1))
    layers: list[nn.Module] = [_conv_bn_act(3, 32, 3, 2, activation=nn.ReLU)]
    in_channels = 32
    for out_channels, stride in settings:
      layers.append(nn.Sequential(
          nn.Conv2d(in_channels, in_channels, 3, stride, 1, groups=in_channels, bias=False),
          nn.BatchNorm2d(in_channels), nn.ReLU(inplace=True),
          nn.Conv2d(in_channels, out_channels, 1, bias=False),
          nn.BatchNorm2d(out_channels), nn.ReLU(inplace=True)))
      in_channels = out_channels
    self.model = nn.Sequential(*layers)
    self.fc = nn.Linear(1024, num_classes)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    # The public layout pools with AvgPool2d(7), the same as this mean at 224x224.
    return self.fc(self.model(x).mean(dim=(2, 3)))


def randomize_batch_norm(module: nn.Module, seed: int = 0) -> nn.Module:
  """Gives every BatchNorm2d non-trivial affine parameters and running statistics.

  Fresh modules have mean 0 / var 1 / scale 1 / shift 0, under which a mix-up of BN's
  tensors (mean for var, scale for shift) would go unnoticed by a parity test.
  Returns the module in eval mode.
  """
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for layer in module.modules():
      if isinstance(layer, nn.BatchNorm2d):
        n = layer.num_features
        layer.weight.copy_(torch.rand(n, generator=generator) + 0.5)
        layer.bias.copy_(torch.randn(n, generator=generator) * 0.1)
        layer.running_mean.copy_(torch.randn(n, generator=generator) * 0.1)
        layer.running_var.copy_(torch.rand(n, generator=generator) + 0.5)
        layer.num_batches_tracked.fill_(int(torch.randint(1, 1000, (1,), generator=generator)))
  return module.eval()
