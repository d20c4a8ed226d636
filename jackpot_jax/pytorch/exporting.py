"""Flax variables and masks -> a PyTorch checkpoint in the imported checkpoint's layout.

Formats:
  state_dict: W * M for every masked weight (exact zeros, other entries bit for bit the
    imported ones), every other tensor as imported, BN running statistics from
    `variables` (the search re-estimates them), under the source's names, wrapper and
    "module." prefix; loads with load_state_dict(strict=True) where the source did.
  prune: torch.nn.utils.prune's layout: `<layer>.weight_orig` (the untouched W) and
    `<layer>.weight_mask` (M) instead of `<layer>.weight` for masked layers; it loads into
    a module after prune.identity (or any prune method) was applied to those layers.
  masks: bit-packed masks only (see masks_file).
The authors' `<layer>.b_mask` entries are written as the exported mask and their
`<layer>.mask` scores as `scores` when given, else as the mask itself (whose top-k is the
mask again); layers without a mask get all ones. A fused tensor (timm's qkv) is written
whole, its parts (weights, masks, scores) stacked by rows as they came; in the prune
format a part without a mask gets all ones. The wrapper is written back around the
state_dict alone: the source's other entries (epoch, optimizer state) describe the dense
training run, not the jackpot. The output file is a torch pickle, or safetensors when its
name ends in .safetensors (flat, so without a wrapper).
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Mapping

import numpy as np
from flax import traverse_util

from jackpot_jax import fileio
from jackpot_jax.fileio import atomic_path
from jackpot_jax.errors import CheckpointMismatchError
from jackpot_jax.pytorch.importing import ImportedModel
from jackpot_jax.pytorch.layout import CheckpointLayout, TensorSource, by_key, to_torch
from jackpot_jax.pytorch.masks_file import write_masks_file

if TYPE_CHECKING:
  import torch

PyTree = Any
FlaxPath = tuple[str, ...]
ExportFormat = Literal["state_dict", "prune", "masks"]


def export_torch(imported_or_layout: ImportedModel | CheckpointLayout,
                 variables: Mapping[str, PyTree], masks: PyTree | None,
                 output_path: str | os.PathLike, format: ExportFormat = "state_dict",
                 clean_keys: bool = False, *, scores: PyTree | None = None) -> Path:
  """Writes a jackpot as a PyTorch checkpoint or a masks file, atomically.

  Args:
    imported_or_layout: the `ImportedModel` the variables came from, or its layout.
    variables: {"params", "batch_stats"} in Flax layout, e.g. after the search.
    masks: tree mirroring params with a bool (or 0/1 float) mask per masked kernel; None
      exports the dense network.
    output_path: the file to write; written to a temporary name, then renamed.
    format: "state_dict", "prune" or "masks" (module docstring).
    clean_keys: write a bare state_dict with neither wrapper nor prefix.
    scores: scores to write into the authors' `<layer>.mask` entries, if the source had them.

  Returns:
    The path written.

  Raises:
    CheckpointMismatchError: variables or masks do not fit the layout.
  """
  layout = (imported_or_layout.layout if isinstance(imported_or_layout, ImportedModel)
            else imported_or_layout)
  if format not in ("state_dict", "prune", "masks"):
    raise ValueError(f"unknown export format {format!r}; choose state_dict, prune or masks")
  output_path = fileio.as_path(output_path, "output")
  flat_masks = _checked_masks(layout, masks)
  if format == "masks":
    if not flat_masks:
      raise ValueError("format='masks' needs masks; got none")
    write_masks_file(layout, flat_masks, output_path)
    return output_path
  flat_variables = traverse_util.flatten_dict(dict(variables))
  flat_scores = _params_paths(scores)
  tensors = {}
  for parts in by_key(layout.tensors).values():
    tensors.update(_key_entries(parts, flat_variables, flat_masks, flat_scores,
                                prune=format == "prune"))
  _write(tensors, layout, output_path, clean_keys)
  return output_path


def _params_paths(tree: PyTree | None) -> dict[FlaxPath, np.ndarray]:
  """A params-mirroring tree flattened to full variable paths ("params", ...)."""
  if not tree:
    return {}
  return {("params", *path): np.asarray(leaf)
          for path, leaf in traverse_util.flatten_dict(dict(tree)).items()}


def _checked_masks(layout: CheckpointLayout, masks: PyTree | None) -> dict[FlaxPath, np.ndarray]:
  """Masks as bool arrays keyed by kernel path, each checked to be a 0/1 array of its shape."""
  kernels = {path: s for path, s in layout.variable_sources().items() if path[-1] == "kernel"}
  checked, problems = {}, []
  for path, mask in _params_paths(masks).items():
    name = "/".join(path[1:])
    if path not in kernels:
      problems.append(f"{name} is not an imported kernel")
      continue
    source = kernels[path]
    if to_torch(mask, source.transform).shape != source.shape:
      problems.append(f"{name} has shape {mask.shape}")
      continue
    if mask.dtype != np.bool_ and not np.all((mask == 0) | (mask == 1)):
      problems.append(f"{name} is not binary")
      continue
    checked[path] = mask.astype(bool)
  if problems:
    raise CheckpointMismatchError(f"masks do not fit the layout of {layout.model_name!r}: "
                                  f"{len(problems)} problems ({'; '.join(problems[:3])})")
  return checked


def _key_entries(parts: tuple[TensorSource, ...], variables: Mapping[FlaxPath, Any],
                 masks: Mapping[FlaxPath, np.ndarray], scores: Mapping[FlaxPath, np.ndarray],
                 prune: bool) -> dict[str, torch.Tensor]:
  """The checkpoint entries of one key: its parts' entries stacked by rows."""
  torch_masks = [None if s.role == "counter" or s.target not in masks
                 else to_torch(masks[s.target], s.transform) for s in parts]
  if len(parts) > 1 and any(m is not None for m in torch_masks):
    # One weight_mask covers every part, and W * 1 is W exactly.
    torch_masks = [np.ones(s.shape, bool) if m is None else m
                   for s, m in zip(parts, torch_masks)]
  entries = [_export_entries(s, variables, m, scores, prune) for s, m in zip(parts, torch_masks)]
  if len(entries) == 1:
    return entries[0]
  return {name: _torch().cat([entry[name] for entry in entries]) for name in entries[0]}


def _export_entries(source: TensorSource, variables: Mapping[FlaxPath, Any],
                    torch_mask: np.ndarray | None, scores: Mapping[FlaxPath, np.ndarray],
                    prune: bool) -> dict[str, torch.Tensor]:
  """The checkpoint entries one source tensor turns into (two for a pruned weight)."""
  if source.role == "counter":
    return {source.key: _torch().tensor(source.value, dtype=getattr(_torch(), source.dtype))}
  if source.role == "variable":
    return _variable_entries(source, variables, torch_mask, prune)
  return {source.key: _tensor(_jackpot_value(source, scores, torch_mask), source.dtype)}


def _variable_entries(source: TensorSource, variables: Mapping[FlaxPath, Any],
                      torch_mask: np.ndarray | None, prune: bool) -> dict[str, torch.Tensor]:
  path = "/".join(source.target)
  if source.target not in variables:
    raise CheckpointMismatchError(f"variables lack {path}, the import of {source.key}; pass "
                                  "the variables of the imported model")
  value = to_torch(np.asarray(variables[source.target]), source.transform)
  if value.shape != source.shape:
    raise CheckpointMismatchError(f"variable {path} has PyTorch shape {value.shape}, the "
                                  f"checkpoint's {source.key} {source.shape}")
  if torch_mask is None:
    return {source.key: _tensor(value, source.dtype)}
  if prune:
    return {f"{source.key}_orig": _tensor(value, source.dtype),
            f"{source.key}_mask": _tensor(torch_mask, source.dtype)}
  # where, not multiply: pruned entries become +0.0 even where W is negative.
  return {source.key: _tensor(np.where(torch_mask, value, np.zeros((), value.dtype)),
                              source.dtype)}


def _jackpot_value(source: TensorSource, scores: Mapping[FlaxPath, np.ndarray],
                   torch_mask: np.ndarray | None) -> np.ndarray:
  """The authors' `.b_mask` (the mask) or `.mask` (the scores, else the mask) entry."""
  if torch_mask is None:
    torch_mask = np.ones(source.shape, bool)
  score = scores.get(source.target)
  if source.role != "scores" or score is None:
    return torch_mask
  torch_score = to_torch(score, source.transform)
  if torch_score.shape != source.shape:
    raise CheckpointMismatchError(f"scores for {source.key} have PyTorch shape "
                                  f"{torch_score.shape}, the checkpoint's {source.shape}")
  return torch_score


def _torch():
  """PyTorch, imported for its formats only: a masks file is written without it (PyTorch
  adds a second and a half to a process's start)."""
  import torch  # pylint: disable=import-outside-toplevel,redefined-outer-name
  return torch


def _tensor(value: np.ndarray, dtype: str) -> torch.Tensor:
  # A copy: arrays from JAX are read-only, which torch.from_numpy warns about.
  return _torch().from_numpy(np.array(value, order="C")).to(getattr(_torch(), dtype))


def _write(tensors: dict[str, torch.Tensor], layout: CheckpointLayout, path: Path,
           clean_keys: bool) -> None:
  if not clean_keys:
    tensors = {layout.prefix + key: value for key, value in tensors.items()}
  with atomic_path(path) as temporary:
    if path.suffix == ".safetensors":
      from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
      save_file(tensors, temporary)
    elif layout.wrapper and not clean_keys:
      _torch().save({layout.wrapper: tensors}, temporary)
    else:
      _torch().save(tensors, temporary)
