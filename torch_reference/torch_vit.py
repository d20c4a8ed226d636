"""timm's VisionTransformer in its exact key layout, for ViT parity and export tests.

timm does not import beside the pinned torch wheel (it needs torchvision), so the layout
is written here: cls_token, pos_embed, patch_embed.proj, blocks.{i}.{norm1, attn.qkv
(query, key and value fused by rows), attn.proj, norm2, mlp.fc1, mlp.fc2}, norm (class
token head) or fc_norm (average head, where norm is an Identity without keys), head. The
forward is timm's with its defaults: pre-norm blocks, scaled dot-product attention, no
layer scale, no dropout; with `dynamic_img_size` other input sizes resample pos_embed as
timm's resample_abs_pos_embed does (bicubic, antialias=True).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class TimmAttention(nn.Module):
  def __init__(self, dim: int, num_heads: int, qkv_bias: bool = True):
    super().__init__()
    self.num_heads = num_heads
    self.qkv = nn.Linear(dim, dim * 3, bias=qkv_bias)
    self.proj = nn.Linear(dim, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    batch, tokens, dim = x.shape
    qkv = self.qkv(x).reshape(batch, tokens, 3, self.num_heads, dim // self.num_heads)
    q, k, v = qkv.permute(2, 0, 3, 1, 4).unbind(0)
    x = F.scaled_dot_product_attention(q, k, v)
    return self.proj(x.transpose(1, 2).reshape(batch, tokens, dim))


class TimmMlp(nn.Module):
  def __init__(self, dim: int, hidden: int, gelu: str = "none"):
    super().__init__()
    self.fc1 = nn.Linear(dim, hidden)
    self.act = nn.GELU(approximate=gelu)
    self.fc2 = nn.Linear(hidden, dim)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.fc2(self.act(self.fc1(x)))


class TimmBlock(nn.Module):
  def __init__(self, dim: int, num_heads: int, mlp_dim: int, eps: float, qkv_bias: bool,
               gelu: str):
    super().__init__()
    self.norm1 = nn.LayerNorm(dim, eps=eps)
    self.attn = TimmAttention(dim, num_heads, qkv_bias)
    self.norm2 = nn.LayerNorm(dim, eps=eps)
    self.mlp = TimmMlp(dim, mlp_dim, gelu)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = x + self.attn(self.norm1(x))
    return x + self.mlp(self.norm2(x))


class TimmPatchEmbed(nn.Module):
  def __init__(self, in_channels: int, dim: int, patch_size: int):
    super().__init__()
    self.proj = nn.Conv2d(in_channels, dim, patch_size, patch_size)

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    return self.proj(x).permute(0, 2, 3, 1)  # (batch, grid h, grid w, dim), timm's NHWC


class TimmVisionTransformer(nn.Module):
  """timm.models.vision_transformer.VisionTransformer, class token, no registers.

  Args:
    global_pool: "token" (class token, final `norm`) or "avg" (mean of the patch tokens,
      then `fc_norm`).
    gelu: nn.GELU's `approximate`: "none" (exact) or "tanh".
  """

  def __init__(self, img_size: int = 224, patch_size: int = 16, in_channels: int = 3,
               num_classes: int = 1000, dim: int = 768, depth: int = 12, num_heads: int = 12,
               mlp_dim: int = 3072, global_pool: str = "token", eps: float = 1e-6,
               qkv_bias: bool = True, gelu: str = "none", dynamic_img_size: bool = False):
    super().__init__()
    self.global_pool = global_pool
    self.dynamic_img_size = dynamic_img_size
    self.grid_size = (img_size // patch_size,) * 2
    self.patch_embed = TimmPatchEmbed(in_channels, dim, patch_size)
    # Unit scale (timm's init is near zero) so that parity tests see both embeddings.
    self.cls_token = nn.Parameter(torch.randn(1, 1, dim))
    self.pos_embed = nn.Parameter(torch.randn(1, 1 + math.prod(self.grid_size), dim))
    self.blocks = nn.Sequential(*[TimmBlock(dim, num_heads, mlp_dim, eps, qkv_bias, gelu)
                                  for _ in range(depth)])
    use_fc_norm = global_pool == "avg"
    self.norm = nn.Identity() if use_fc_norm else nn.LayerNorm(dim, eps=eps)
    self.fc_norm = nn.LayerNorm(dim, eps=eps) if use_fc_norm else nn.Identity()
    self.head = nn.Linear(dim, num_classes)

  def _pos_embed(self, x: torch.Tensor) -> torch.Tensor:
    batch, height, width, dim = x.shape
    pos_embed = self.pos_embed
    if self.dynamic_img_size and (height, width) != self.grid_size:
      grid = pos_embed[:, 1:].reshape(1, *self.grid_size, dim).permute(0, 3, 1, 2)
      grid = F.interpolate(grid, size=(height, width), mode="bicubic", antialias=True)
      pos_embed = torch.cat([pos_embed[:, :1],
                             grid.permute(0, 2, 3, 1).reshape(1, height * width, dim)], dim=1)
    x = torch.cat([self.cls_token.expand(batch, -1, -1), x.reshape(batch, -1, dim)], dim=1)
    return x + pos_embed

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x = self.norm(self.blocks(self._pos_embed(self.patch_embed(x))))
    x = x[:, 1:].mean(dim=1) if self.global_pool == "avg" else x[:, 0]
    return self.head(self.fc_norm(x))


def randomize_layer_norms(module: nn.Module, seed: int = 0) -> nn.Module:
  """Gives every LayerNorm a non-trivial scale and shift (fresh ones are 1 and 0, under
  which a mix-up of the two would go unnoticed). Returns the module in eval mode."""
  generator = torch.Generator().manual_seed(seed)
  with torch.no_grad():
    for layer in module.modules():
      if isinstance(layer, nn.LayerNorm):
        layer.weight.copy_(torch.rand(layer.weight.shape, generator=generator) + 0.5)
        layer.bias.copy_(torch.randn(layer.bias.shape, generator=generator) * 0.1)
  return module.eval()
