"""Masks-only export: a small .npz of bit-packed masks, tied to the weights by hash.

The file holds, per masked layer, the mask in PyTorch layout packed with np.packbits
(C order), plus one JSON metadata string: format version, model name and num_classes,
the sha256 of the source weights, and per layer its module name, shape, keep count and
array name. A fused tensor (timm's qkv) is one layer, its parts' masks stacked by rows
(all ones for a part without one). It is readable with numpy alone (no pickle) and about
1/32 of the float32 weights. It carries no BN statistics: a network evaluated with it uses
the source checkpoint's running statistics, not the ones re-estimated during the search.
"""

from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path
from typing import Any, Mapping

import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jackpot_jax import fileio
from jackpot_jax.fileio import atomic_path
from jackpot_jax.errors import (CheckpointNotFoundError, CheckpointReadError,
                                MasksFileError, one_line)
from jackpot_jax.pytorch.importing import ImportedModel
from jackpot_jax.pytorch.layout import (CheckpointLayout, TensorSource, by_key, to_flax,
                                        to_torch, whole_shape)

FORMAT = "jackpot_jax.masks"
VERSION = 1
_METADATA = "metadata"

PyTree = Any


def write_masks_file(layout: CheckpointLayout, masks: Mapping[tuple[str, ...], np.ndarray],
                     path: Path) -> None:
  """Writes `masks` (kernel path ("params", ...) -> bool array, Flax layout) to `path`."""
  layers, arrays = [], {}
  for parts in _kernels(layout).values():
    if not any(part.target in masks for part in parts):
      continue
    mask = np.concatenate([to_torch(masks[part.target], part.transform)
                           if part.target in masks else np.ones(part.shape, bool)
                           for part in parts])
    name = f"mask_{len(layers)}"
    arrays[name] = np.packbits(mask.reshape(-1))
    layers.append({"name": _module_name(parts[0]), "shape": list(whole_shape(parts)),
                   "keep_count": int(mask.sum()), "array": name})
  metadata = {"format": FORMAT, "version": VERSION, "model_name": layout.model_name,
              "num_classes": layout.num_classes, "source_sha256": layout.source_sha256,
              "layers": layers}
  # Through an open file: given a name, np.savez would append ".npz" to the temporary one.
  with atomic_path(path) as temporary, open(temporary, "wb") as f:
    np.savez(f, **{_METADATA: np.array(json.dumps(metadata))}, **arrays)


def apply_masks_file(path: str | os.PathLike,
                     imported: ImportedModel | CheckpointLayout) -> PyTree:
  """Reads a masks file for an imported model, checking it was made for these weights.

  Args:
    path: a file written by `export_torch(..., format="masks")`.
    imported: the `ImportedModel` (or its `CheckpointLayout`) the masks are applied to.

  Returns:
    A tree mirroring params with a bool mask (Flax layout) per masked kernel, ready for
    the `masks` collection.

  Raises:
    CheckpointReadError: missing, damaged or not a masks file.
    MasksFileError: made for other weights, or naming layers or shapes the model lacks.
  """
  layout = imported.layout if isinstance(imported, ImportedModel) else imported
  path = fileio.as_path(path, "masks file")
  with fileio.local_file(path, "masks file") as local:
    metadata, arrays = _read(local)
  if metadata["source_sha256"] != layout.source_sha256:
    raise MasksFileError(
        f"masks file {path} was made for weights with sha256 "
        f"{metadata['source_sha256'][:12]}..., the imported checkpoint's is "
        f"{layout.source_sha256[:12]}...; import the checkpoint the masks were searched on")
  kernels = {_module_name(parts[0]): parts for parts in _kernels(layout).values()}
  _check_layers_fit(path, layout.model_name, metadata["layers"], kernels)
  flat = {}
  for layer in metadata["layers"]:
    parts = kernels[layer["name"]]
    shape = whole_shape(parts)
    mask = np.unpackbits(arrays[layer["array"]], count=int(np.prod(shape))).astype(bool)
    if int(mask.sum()) != layer["keep_count"]:
      raise CheckpointReadError(f"masks file {path} is damaged: {layer['name']} keeps "
                                f"{int(mask.sum())} weights, its record says "
                                f"{layer['keep_count']}")
    mask = mask.reshape(shape)
    for part in parts:
      rows = mask if part.rows is None else mask[part.rows[0]:part.rows[1]]
      flat[part.target[1:]] = jnp.asarray(to_flax(rows, part.transform))
  return traverse_util.unflatten_dict(flat)


def _kernels(layout: CheckpointLayout) -> dict[str, tuple[TensorSource, ...]]:
  """The kernels' sources by checkpoint key (a fused tensor's parts in row order)."""
  return by_key(s for s in layout.tensors if s.role == "variable" and s.target[-1] == "kernel")


def _check_layers_fit(path: Path, model_name: str, layers: list[dict[str, Any]],
                      kernels: Mapping[str, tuple[TensorSource, ...]]) -> None:
  unknown = [layer["name"] for layer in layers if layer["name"] not in kernels]
  mismatched = [f"{layer['name']} file {tuple(layer['shape'])} vs model "
                f"{whole_shape(kernels[layer['name']])}" for layer in layers
                if layer["name"] in kernels
                and tuple(layer["shape"]) != whole_shape(kernels[layer["name"]])]
  if unknown or mismatched:
    raise MasksFileError(f"masks file {path} does not fit model {model_name!r}: "
                         f"{len(unknown)} unknown layers ({', '.join(unknown[:3])}); "
                         f"{len(mismatched)} shape mismatches ({', '.join(mismatched[:3])})")


def _module_name(source: TensorSource) -> str:
  return source.key.rpartition(".")[0]


def _read(path: Path) -> tuple[dict[str, Any], dict[str, np.ndarray]]:
  if not path.is_file():
    raise CheckpointNotFoundError(f"masks file {path} does not exist or is not a file")
  try:
    with np.load(path, allow_pickle=False) as archive:
      arrays = {name: archive[name] for name in archive.files}
  except (zipfile.BadZipFile, ValueError, OSError, EOFError) as error:
    raise CheckpointReadError(
        f"{path} is not a readable masks file; it may be truncated ({one_line(error)})"
    ) from error
  try:
    metadata = json.loads(str(arrays.pop(_METADATA)))
    valid = metadata["format"] == FORMAT and metadata["version"] == VERSION
  except (KeyError, ValueError, TypeError):
    valid = False
  if not valid:
    raise CheckpointReadError(f"{path} is not a {FORMAT} file (version {VERSION})")
  return metadata, arrays
