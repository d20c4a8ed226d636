"""A straightforward PyTorch implementation of the search, as the authors' code runs it.

Each masked layer holds its scores as a parameter and its binary mask as a buffer; the
forward pass uses W * M with a straight-through mask, and after every optimizer step a
Python loop over the layers sorts each layer's scores and rewrites its mask. This is the
baseline jackpot_jax's speed is compared with (benchmarks/step_speed.py).
"""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn


class StraightThrough(torch.autograd.Function):
  """Forward: the binary mask; backward: the gradient goes to the scores unchanged."""

  @staticmethod
  def forward(ctx, scores, mask):
    return mask

  @staticmethod
  def backward(ctx, grad):
    return grad, None


def attach_scores(net: nn.Module, sparsity: float) -> list[nn.Module]:
  """Gives every Conv2d magnitude scores (1 / 0.99) and a magnitude mask; returns them."""
  convs = [m for m in net.modules() if isinstance(m, nn.Conv2d)]
  for conv in convs:
    weight = conv.weight.detach()
    conv.weight.requires_grad_(False)
    prune = int(sparsity * weight.numel())
    smallest = torch.argsort(weight.abs().flatten(), stable=True)[:prune]
    scores = torch.ones(weight.numel())
    scores[smallest] = 0.99
    mask = torch.ones(weight.numel())
    mask[smallest] = 0.0
    conv.scores = nn.Parameter(scores.view_as(weight))
    conv.register_buffer("b_mask", mask.view_as(weight))
    conv.prune_count = prune
    conv.forward = _masked_forward(conv)
  return convs


def _masked_forward(conv: nn.Conv2d):
  def forward(x):
    mask = StraightThrough.apply(conv.scores, conv.b_mask)
    return F.conv2d(x, conv.weight * mask, conv.bias, conv.stride, conv.padding,
                    conv.dilation, conv.groups)
  return forward


@torch.no_grad()
def update_masks(convs: list[nn.Module]) -> None:
  """The authors' per-layer host loop: sort the scores, zero the lowest, one layer at a time."""
  for conv in convs:
    _, order = conv.scores.flatten().sort()
    flat = conv.b_mask.view(-1)
    flat[order[:conv.prune_count]] = 0.0
    flat[order[conv.prune_count:]] = 1.0
