"""Trains the shipped pre-trained ViT: `vit_tiny_p4` on Fashion-MNIST, in PyTorch.

The model is Hugging Face `transformers`' ViTForImageClassification with the
architecture of jackpot_jax's `vit_tiny_p4` (28x28x1 input, patch 4, width 64, depth 6,
4 heads, MLP 256, LayerNorm eps 1e-6, exact GELU), so its state_dict is in the HF key
layout jackpot_jax imports. Offline, on the CPU, from Debian's Fashion-MNIST files; AdamW
with a linear warm-up and a per-step cosine decay, random flips (random crops with
--crop_padding > 0: with 2 pixels, 3 epochs ended at a training loss of 0.65 against 0.48
without, so the shipped model trains without them).

  python scripts/train_vit.py --out=pretrained/vit_tiny_fashion_mnist.pth
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
import torch.nn.functional as F
import transformers

from train_pretrained import load_split, normalise, random_crop_and_flip
from jackpot_jax.data import fashion_mnist


def parse_args() -> argparse.Namespace:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  parser.add_argument("--source_dir", default=fashion_mnist.DEBIAN_SOURCE_DIR,
                      help="directory holding the four Fashion-MNIST *-ubyte.gz files")
  parser.add_argument("--out", default="pretrained/vit_tiny_fashion_mnist.pth")
  parser.add_argument("--epochs", type=int, default=8)
  parser.add_argument("--batch_size", type=int, default=128)
  parser.add_argument("--lr", type=float, default=2e-3, help="peak AdamW learning rate")
  parser.add_argument("--warmup_epochs", type=float, default=1.0)
  parser.add_argument("--weight_decay", type=float, default=0.05)
  parser.add_argument("--crop_padding", type=int, default=0,
                      help="zero padding (pixels) before the random 28x28 crop")
  parser.add_argument("--seed", type=int, default=0)
  parser.add_argument("--threads", type=int, default=2)
  return parser.parse_args()


def vit_tiny_p4(num_classes: int = 10) -> transformers.ViTForImageClassification:
  """jackpot_jax's `vit_tiny_p4` as a Hugging Face model (random weights)."""
  config = transformers.ViTConfig(
      image_size=28, patch_size=4, num_channels=1, hidden_size=64, num_hidden_layers=6,
      num_attention_heads=4, intermediate_size=256, hidden_act="gelu", layer_norm_eps=1e-6,
      qkv_bias=True, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
      num_labels=num_classes)
  return transformers.ViTForImageClassification(config)


def logits_of(model: transformers.ViTForImageClassification, images: torch.Tensor
              ) -> torch.Tensor:
  return model(pixel_values=normalise(images)).logits


def evaluate(model, images: torch.Tensor, labels: torch.Tensor, batch_size: int = 1000) -> float:
  model.eval()
  correct = 0
  with torch.inference_mode():
    for start in range(0, len(images), batch_size):
      logits = logits_of(model, images[start:start + batch_size])
      correct += (logits.argmax(1) == labels[start:start + batch_size]).sum().item()
  return correct / len(images)


def train(args: argparse.Namespace) -> transformers.ViTForImageClassification:
  train_images, train_labels = load_split(args.source_dir, "train")
  test_images, test_labels = load_split(args.source_dir, "test")
  generator = torch.Generator().manual_seed(args.seed)
  model = vit_tiny_p4()
  optimizer = torch.optim.AdamW(model.parameters(), lr=args.lr, weight_decay=args.weight_decay)
  steps_per_epoch = len(train_images) // args.batch_size
  total_steps = args.epochs * steps_per_epoch
  warmup = max(1, int(args.warmup_epochs * steps_per_epoch))

  def rate(step: int) -> float:
    if step < warmup:
      return (step + 1) / warmup
    return 0.5 * (1.0 + math.cos(math.pi * (step - warmup) / max(1, total_steps - warmup)))

  schedule = torch.optim.lr_scheduler.LambdaLR(optimizer, rate)
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
  print(f"test accuracy {evaluate(model, test_images, test_labels):.4f}", flush=True)
  return model


def main() -> None:
  args = parse_args()
  torch.set_flush_denormal(True)
  torch.set_num_threads(args.threads)
  torch.manual_seed(args.seed)
  start = time.time()
  model = train(args)
  os.makedirs(os.path.dirname(os.path.abspath(args.out)), exist_ok=True)
  torch.save(model.state_dict(), args.out)
  print(f"saved {args.out} ({os.path.getsize(args.out) / 1e6:.2f} MB) after "
        f"{time.time() - start:.0f}s", flush=True)


if __name__ == "__main__":
  main()
