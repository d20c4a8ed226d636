"""Overlap of two masks with equal keep counts: |kept_a and kept_b| / |kept|."""

from __future__ import annotations

from typing import Any

import jax
import numpy as np
from flax import traverse_util

from jackpot_jax.models.registry import torch_module_name


def mask_overlap(masks_a: Any, masks_b: Any) -> dict:
  """Per-layer and overall overlap; both trees must keep the same count in every layer.

  Returns:
    {"overall": fraction, "per_layer": {layer name: fraction}}
  """
  flat_a = traverse_util.flatten_dict(jax.device_get(masks_a))
  flat_b = traverse_util.flatten_dict(jax.device_get(masks_b))
  if set(flat_a) != set(flat_b):
    raise ValueError("the two mask trees cover different layers")
  per_layer, shared_total, kept_total = {}, 0, 0
  for key in flat_a:
    a, b = np.asarray(flat_a[key], bool), np.asarray(flat_b[key], bool)
    kept = int(a.sum())
    if kept != int(b.sum()):
      raise ValueError(f"layer {torch_module_name(key[:-1])} keeps {kept} vs {int(b.sum())} "
                       "weights; overlap needs equal keep counts")
    shared = int(np.sum(a & b))
    per_layer[torch_module_name(key[:-1])] = shared / max(kept, 1)
    shared_total += shared
    kept_total += kept
  return {"overall": shared_total / max(kept_total, 1), "per_layer": per_layer}
