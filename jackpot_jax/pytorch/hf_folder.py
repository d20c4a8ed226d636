"""Hugging Face model folders (what `save_pretrained` writes) as checkpoints.

A folder holds config.json, which names the model family (`model_type`) and its sizes,
and the weights: model.safetensors, or shards listed by model.safetensors.index.json
(pytorch_model.bin and its index likewise). The model a config.json describes comes from
the model registry (`models.folder_model`), so `model.name=auto` builds it; a name given
instead must be one that builds the same model.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Mapping

from jackpot_jax import fileio, models
from jackpot_jax.errors import CheckpointNotFoundError, CheckpointReadError

AUTO = "auto"
CONFIG_FILE = "config.json"
# (single file, index of shards) per format, the preferred first (as from_pretrained).
WEIGHT_FILES = (("safetensors", "model.safetensors", "model.safetensors.index.json"),
                ("torch", "pytorch_model.bin", "pytorch_model.bin.index.json"))


@dataclasses.dataclass(frozen=True)
class ResolvedModel:
  """The model of a run whose checkpoint is a folder.

  Attributes:
    name: the registered model that builds it.
    kwargs: its builder arguments: the folder's, plus those the config adds.
    num_classes: the classifier's width, the folder's number of labels.
  """

  name: str
  kwargs: dict[str, Any]
  num_classes: int


def is_model_folder(path: fileio.AnyPath) -> bool:
  """Whether the checkpoint path is a folder (a file, a missing path: False)."""
  fileio.check_reachable(path, "model.checkpoint")
  return path.is_dir()


def read_config(folder: fileio.AnyPath) -> dict[str, Any]:
  """The folder's config.json.

  Raises:
    CheckpointReadError: it is missing or not a JSON object.
  """
  path = folder / CONFIG_FILE
  if not path.exists():
    raise CheckpointReadError(f"checkpoint folder {folder} has no {CONFIG_FILE}; a Hugging "
                              "Face model folder (save_pretrained) has config.json beside its "
                              "weights; for a single file, point model.checkpoint at the file")
  try:
    config = json.loads(path.read_text())
  except ValueError as error:
    raise CheckpointReadError(f"{path} is not valid JSON ({error})") from error
  if not isinstance(config, dict):
    raise CheckpointReadError(f"{path} holds a {type(config).__name__}, not a JSON object")
  return config


def weight_files(folder: fileio.AnyPath) -> tuple[list[fileio.AnyPath], str]:
  """The folder's weight files in shard order, and their format ("safetensors", "torch").

  Raises:
    CheckpointNotFoundError: no weights, or shards the index lists are missing.
    CheckpointReadError: the index is not valid.
  """
  for file_format, single, index in WEIGHT_FILES:
    if (folder / single).exists():
      return [folder / single], file_format
    if (folder / index).exists():
      return _shards(folder, folder / index), file_format
  names = ", ".join(name for _, single, index in WEIGHT_FILES for name in (single, index))
  raise CheckpointNotFoundError(f"checkpoint folder {folder} holds no weights: none of {names}")


def _shards(folder: fileio.AnyPath, index: fileio.AnyPath) -> list[fileio.AnyPath]:
  try:
    weight_map = json.loads(index.read_text())["weight_map"]
    names = list(dict.fromkeys(weight_map.values()))
  except (ValueError, KeyError, TypeError, AttributeError) as error:
    raise CheckpointReadError(f"{index} is not a shard index (a JSON object with a "
                              f"weight_map of tensor -> file): {error}") from error
  missing = [name for name in names if not (folder / name).exists()]
  if missing:
    raise CheckpointNotFoundError(f"checkpoint folder {folder} lacks {len(missing)} of the "
                                  f"shards {index.name} lists ({', '.join(missing[:3])})")
  return [folder / name for name in names]


def resolve_model(folder: fileio.AnyPath, name: str, num_classes: int,
                  kwargs: Mapping[str, Any]) -> ResolvedModel:
  """The model the folder's config.json describes, checked against the config's.

  Args:
    name: model.name: AUTO, or a registered name that must build the folder's model.
    num_classes: model.num_classes: 0 (the folder's labels) or their number.
    kwargs: model.kwargs; those the folder sets must have its values.

  Raises:
    CheckpointReadError: no config.json, or not a JSON object.
    ValueError: an unsupported model_type or config, or a config that disagrees.
  """
  config = read_config(folder)
  where = f"checkpoint folder {folder}"
  model_type = config.get("model_type")
  try:
    described = models.folder_model(model_type, config)
  except ValueError as error:
    raise ValueError(f"{where}: config.json's {error}") from error
  resolved = described.names[0]
  if name not in (AUTO, *described.names):
    sizes = ", ".join(f"{key}={value}" for key, value in described.kwargs.items())
    raise ValueError(f"model.name={name!r} but {where} holds a {model_type} model ({sizes}) "
                     f"that {' or '.join(map(repr, described.names))} builds; set "
                     f"--config.model.name={AUTO} to take the folder's")
  disagree = [f"{key}={kwargs[key]!r} (config.json: {value!r})"
              for key, value in described.kwargs.items() if key in kwargs
              and kwargs[key] != value]
  if disagree:
    raise ValueError(f"model.kwargs disagree with {where}: {', '.join(disagree)}; drop them")
  labels = _num_labels(config, where)
  if num_classes not in (0, labels):
    raise ValueError(f"model.num_classes={num_classes} but {where} has {labels} labels "
                     f"(config.json); set --config.model.num_classes={labels}, or 0 to take "
                     "the folder's")
  return ResolvedModel(name=resolved if name == AUTO else name,
                       kwargs={**dict(kwargs), **described.kwargs}, num_classes=labels)


def _num_labels(config: Mapping[str, Any], where: str) -> int:
  """id2label's size (what save_pretrained writes), else num_labels."""
  labels = config.get("id2label")
  count = len(labels) if isinstance(labels, dict) else config.get("num_labels")
  if not isinstance(count, int) or isinstance(count, bool) or count < 1:
    raise ValueError(f"{where}: config.json gives no number of classes (id2label or "
                     "num_labels); add id2label")
  return count
