"""Trains the project's built-in pre-trained model: a CIFAR-style ResNet-20 on Fashion-MNIST.

A lottery-jackpot search needs a dense pre-trained network to search in. This script
makes the default one offline, on CPU, in PyTorch, from Debian's Fashion-MNIST files, in
the key layout jackpot_jax imports (conv1/bn1/layer{1,2,3}.{i}/linear), and saves its
state_dict.

  python scripts/train_pretrained.py --epochs=10 --out=pretrained/resnet20_fashion_mnist.pth
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time
from pathlib import Path
from typing import Callable

import torch
import torch.nn.functional as F

from jackpot_jax.data import fashion_mnist

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # torch_reference/ is not installed

from torch_reference.torch_models import CifarResNet


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source_dir", default=fashion_mnist.DEBIAN_SOURCE_DIR,
                      help="directory holding the four Fashion-MNIST *-ubyte.gz files")
  parser.add_argument("--out", default="pretrained/resnet20_fashion_mnist.pth")
  parser.add_argument("--epochs", type=int, default=10)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=0.1, help="peak learning rate (cosine to 0)")
  parser.add_argument("--weight_decay", type=float, default=5e-4)
  parser.add_argument("--crop_padding", type=int, default=2,
                      help="zero padding (pixels) before the random 28x28 crop")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=2)
  return parser.parse_args()


def load_split(source_dir: str, split: str) -> tuple[torch.Tensor, torch.Tensor]:
  """Returns uint8 images (N, 1, 28, 28) and int64 labels (N,) of a split."""
  images, labels = fashion_mnist.read_fashion_mnist(source_dir, split)
  return torch.from_numpy(images).permute(0, 3, 1, 2).contiguous(), torch.from_numpy(labels)


def normalise(images: torch.Tensor) -> torch.Tensor:
  """uint8 pixels -> float32 with Fashion-MNIST's training-set mean and std."""
  mean, std = fashion_mnist.MEAN[0], fashion_mnist.STD[0]
  return (images.float() / 255.0 - mean) / std


def random_crop_and_flip(images: torch.Tensor, padding: int,
                         generator: torch.Generator) -> torch.Tensor:
  """Per-example random crop after zero padding, then a random horizontal flip.

  The padding is added to the raw pixels (black, as torchvision's RandomCrop does), so it
  becomes -mean/std after normalisation. Done with one gather for the whole batch instead
  of a Python loop over examples.
  """
  n, _, height, width = images.shape
  padded = F.pad(images, (padding,) * 4)
  top = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
  left = torch.randint(0, 2 * padding + 1, (n, 1), generator=generator)
  rows = top + torch.arange(height)
  cols = left + torch.arange(width)
  flip = torch.rand(n, generator=generator) < 0.5
  cols = torch.where(flip[:, None], cols.flip(1), cols)
  batch = torch.arange(n)[:, None, None]
  # Advanced indices around the channel slice put the channel last: (N, H, W, C).
  cropped = padded[batch, :, rows[:, :, None], cols[:, None, :]]
  return cropped.permute(0, 3, 1, 2).contiguous()


def cnn_logits(model: torch.nn.Module, images: torch.Tensor) -> torch.Tensor:
  """Logits of a module that takes normalised NCHW images, as CifarResNet does."""
  return model(normalise(images))


LogitsFn = Callable[[torch.nn.Module, torch.Tensor], torch.Tensor]
# (step, total steps, steps per epoch) -> factor of the peak learning rate.
Rate = Callable[[int, int, int], float]


def cosine(step: int, total_steps: int, steps_per_epoch: int) -> float:
  """Per-step cosine decay to 0 over the run."""
  del steps_per_epoch
  return 0.5 * (1.0 + math.cos(math.pi * step / total_steps))


def evaluate(model: torch.nn.Module, images: torch.Tensor, labels: torch.Tensor,
             batch_size: int = 1000, logits_of: LogitsFn = cnn_logits) -> float:
  """Top-1 accuracy in eval mode (BatchNorm running statistics)."""
  model.eval()
  correct = 0
  with torch.inference_mode():
    for start in range(0, len(images), batch_size):
      logits = logits_of(model, images[start:start + batch_size])
      correct += (logits.argmax(1) == labels[start:start + batch_size]).sum().item()
  return correct / len(images)


def fit(model: torch.nn.Module, optimizer: torch.optim.Optimizer, rate: Rate,
        args: argparse.Namespace, logits_of: LogitsFn = cnn_logits) -> torch.nn.Module:
  """Trains on the training split (random crops and flips, cross-entropy, the learning rate
  `rate` per step), prints each epoch's loss and the final test accuracy."""
  train_images, train_labels = load_split(args.source_dir, "train")
  test_images, test_labels = load_split(args.source_dir, "test")
  generator = torch.Generator().manual_seed(args.seed)
  steps_per_epoch = len(train_images) // args.batch_size
  total_steps = args.epochs * steps_per_epoch
  schedule = torch.optim.lr_scheduler.LambdaLR(
      optimizer, lambda step: rate(step, total_steps, steps_per_epoch))
  for epoch in range(args.epochs):
    model.train()
    start = time.time()
    order = torch.randperm(len(train_images), generator=generator)
    loss_sum = torch.zeros(())
    for step in range(steps_per_epoch):
      index = order[step * args.batch_size:(step + 1) * args.batch_size]
      images = random_crop_and_flip(train_images[index], args.crop_padding, generator)
      loss = F.cross_entropy(logits_of(model, images), train_labels[index])
      optimizer.zero_grad(set_to_none=True)
      loss.backward()
      optimizer.step()
      schedule.step()
      loss_sum += loss.detach()
    print(f"epoch {epoch + 1}/{args.epochs}: train loss {loss_sum.item() / steps_per_epoch:.4f}, "
          f"{time.time() - start:.0f}s", flush=True)
  accuracy = evaluate(model, test_images, test_labels, logits_of=logits_of)
  print(f"test accuracy {accuracy:.4f}", flush=True)
  return model


def train(args: argparse.Namespace) -> torch.nn.Module:
  """SGD with momentum 0.9 and a per-step cosine decay of the learning rate to 0."""
  model = CifarResNet(20, num_classes=10, in_channels=1)
  optimizer = torch.optim.SGD(model.parameters(), lr=args.lr, momentum=0.9,
                              weight_decay=args.weight_decay)
  return fit(model, optimizer, cosine, args)


def run(args: argparse.Namespace, train_fn: Callable[[argparse.Namespace], torch.nn.Module],
        deterministic: bool = True) -> None:
  """Seeds and threads torch, trains with `train_fn`, saves the state_dict at args.out."""
  # Denormal floats make CPU convolutions many times slower late in training.
  torch.set_flush_denormal(True)
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  if deterministic:
    torch.use_deterministic_algorithms(True)
  start = time.time()
  model = train_fn(args)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  torch.save(model.state_dict(), args.out)
  print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) after "
        f"{time.time() - start:.0f}s", flush=True)


def main() -> None:
  run(parse_args(), train)


if __name__ == "__main__":
  main()
