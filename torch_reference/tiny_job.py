"""The tiny search job the tests and benchmarks/process_costs.py run: random CIFAR
ResNets (1 input channel) and a 10-class 8x8 npz dataset, and the config that searches it
in six steps."""

from __future__ import annotations

from pathlib import Path

import ml_collections
import numpy as np
import torch

from jackpot_jax import config_defaults
from torch_reference.torch_models import CifarResNet

# The tiny searches' model: the smallest CIFAR ResNet (one basic block a stage) has every
# kind of layer ResNet-20 has (stem, strided blocks, 1x1 downsampling, classifier) in a
# third of the convolutions, and its programs trace and compile in about half the time.
TINY_DEPTH = 8
TINY_MODEL = f"resnet{TINY_DEPTH}"


def write_tiny_job(root: Path, depths: tuple[int, ...] = (TINY_DEPTH,)) -> Path:
  """`root`/data.npz (80 training images, of which `tiny_config` holds 16 out, and 20 test
  images) and `root`/resnet{depth}.pth for each depth, seeded: the same files every time."""
  rng = np.random.default_rng(0)
  np.savez(root / "data.npz", x_train=rng.integers(0, 256, (80, 8, 8, 1), dtype=np.uint8),
           y_train=np.arange(80) % 10,
           x_test=rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8), y_test=np.arange(20) % 10)
  for depth in depths:
    torch.manual_seed(0)
    net = CifarResNet(depth, num_classes=10, in_channels=1)
    torch.save(net.state_dict(), root / f"resnet{depth}.pth")
  return root


def tiny_config(root: Path, model: str = TINY_MODEL) -> ml_collections.ConfigDict:
  """Six search steps of 16 of the 64 searched examples of `write_tiny_job`'s data,
  evaluations on the 16 held-out ones, checkpoints every 2 steps, on one device; `model`
  names one of its checkpoints ('resnet20' for the deeper network).

  One device, as on a one-GPU machine, although the test processes simulate eight: data
  parallelism over eight simulated CPU devices costs such a search 70% more CPU. The tests
  of multi-device runs set `mesh.num_devices` themselves."""
  config = config_defaults.base_config()
  config.model.name = model
  config.model.checkpoint = str(root / f"{model}.pth")
  config.data.name = f"npz:{root / 'data.npz'}"
  config.data.mean, config.data.std = (0.5,), (0.25,)
  config.data.holdout_images = 16
  # Torch's default init scales weights by 1/sqrt(fan_in), so a global l1 threshold on a
  # random network would empty the widest layers; trained networks do not look like that.
  config.search.sparsity_plan = "uniform"
  config.search.batch_size = 16
  config.search.num_epochs = 1.5
  config.eval.batch_size = 8
  config.checkpoint.every_steps = 2
  config.log_every_steps = 1
  config.progress_bar = False
  config.mesh.num_devices = 1
  return config
