"""Reads a PyTorch or safetensors checkpoint into a flat name -> tensor map.

The packaging is peeled off and remembered so export can put it back: the dict the
state_dict sits in ({'state_dict': ...}, {'model': ...}) and the 'module.' prefix that
DataParallel / DistributedDataParallel (or '_orig_mod.' that torch.compile) add to every
name. The file format is recognised from its first bytes, not from its extension. A
Hugging Face model folder reads as its weight files' tensors, shard after shard.

Tensors come out as NumPy arrays in the file's dtype (bfloat16 as jnp.bfloat16).
PyTorch's zip format and safetensors are read without importing torch (`tensor_files`);
torch reads what that reader does not rebuild (the legacy pickle format, pickled
objects, damaged files, whose errors it words), and the result is converted.
"""

from __future__ import annotations

import dataclasses
import json
import os
import pickle
import struct
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jackpot_jax import fileio
from jackpot_jax.pytorch import hf_folder, tensor_files
from jackpot_jax.errors import (CheckpointNotFoundError, CheckpointReadError,
                                one_line)

WRAPPER_KEYS = ("state_dict", "model", "model_state_dict")
WRAPPING_PREFIXES = ("module.", "_orig_mod.")

_ZIP_MAGIC = b"PK\x03\x04"
_PICKLE_PROTOCOL_OPCODE = b"\x80"


@dataclasses.dataclass(frozen=True)
class RawCheckpoint:
  """A checkpoint's tensors with their packaging recorded.

  Attributes:
    tensors: name -> array (NumPy, the file's dtype) in the file's order, names without
      `prefix`.
    wrapper: the key of the dict that held the state_dict, or None for a bare one.
    prefix: what was stripped from every name ("module.", ...), or "".
    file_format: "torch", "safetensors", or "memory" for a state_dict passed in; a
      folder's is its weight files'.
  """

  tensors: dict[str, np.ndarray]
  wrapper: str | None
  prefix: str
  file_format: str


def read_checkpoint(source: str | os.PathLike | Mapping[str, Any]) -> RawCheckpoint:
  """Loads `source` (a path or an in-memory state_dict of torch tensors or arrays) and
  peels off its packaging.

  A gs:// path is downloaded into a temporary local file first. A folder is a Hugging
  Face model folder (`hf_folder`).

  Raises:
    CheckpointNotFoundError: the path is not a file.
    CheckpointReadError: the file is empty, truncated, damaged, not a checkpoint, or
      holds no state_dict; a folder without weights.
    ValueError: a bucket path that cannot be reached.
  """
  if isinstance(source, Mapping):
    content, file_format, where = source, "memory", "the state_dict passed in"
  else:
    path = fileio.as_path(source, "checkpoint")
    if hf_folder.is_model_folder(path):
      content, file_format = _load_folder(path)
    else:
      with fileio.local_file(path, "checkpoint") as local:
        content, file_format = _load_file(local)
    where = str(path)
  state, wrapper = _unwrap(content, where)
  state, prefix = _strip_prefixes(state)
  return RawCheckpoint({name: tensor_files.as_array(tensor) for name, tensor in state.items()},
                       wrapper, prefix, file_format)


def _load_folder(folder: fileio.AnyPath) -> tuple[dict[str, Any], str]:
  """A folder's weight files merged into one state_dict, in shard order."""
  files, file_format = hf_folder.weight_files(folder)
  merged = {}
  for file in files:
    with fileio.local_file(file, "checkpoint") as local:
      content, _ = _load_file(local)
    merged.update(_unwrap(content, str(file))[0])
  return merged, file_format


def _load_file(path: Path) -> tuple[Any, str]:
  if not path.is_file():
    relative = "" if path.is_absolute() else f" (relative to the current directory {Path.cwd()})"
    raise CheckpointNotFoundError(f"checkpoint {path} does not exist or is not a file{relative}")
  with open(path, "rb") as f:
    head = f.read(16)
  if not head:
    raise CheckpointReadError(f"checkpoint {path} is empty")
  if head.startswith(_ZIP_MAGIC):
    if not zipfile.is_zipfile(path):
      raise CheckpointReadError(
          f"checkpoint {path} is truncated (its zip directory is missing); copy it again")
    try:
      return tensor_files.read_torch_zip(path), "torch"
    except tensor_files.NotReadableWithoutTorch:
      return _torch_load(path), "torch"
  if head.startswith(_PICKLE_PROTOCOL_OPCODE):
    return _torch_load(path), "torch"
  header_size = _safetensors_header_size(head)
  if header_size is not None:
    return _safetensors_load(path, header_size), "safetensors"
  raise CheckpointReadError(
      f"{path} is not a PyTorch (.pth/.pt/.tar) or safetensors checkpoint")


def _torch_load(path: Path) -> Any:
  """torch.load, safe by default; legacy pickles of Python objects only with a warning."""
  import torch  # pylint: disable=import-outside-toplevel
  try:
    return torch.load(path, map_location="cpu", weights_only=True)
  except pickle.UnpicklingError as error:
    if "weights only load failed" not in str(error).lower():
      raise _torch_failure(path, error) from error
  except Exception as error:  # torch raises many types for damaged files
    raise _torch_failure(path, error) from error
  warnings.warn(f"{path} pickles Python objects besides tensors; loading it with "
                "weights_only=False, which runs code from the file: only do so for trusted "
                "files", stacklevel=3)
  try:
    return torch.load(path, map_location="cpu", weights_only=False)
  except Exception as error:
    raise _torch_failure(path, error) from error


def _torch_failure(path: Path, error: Exception) -> CheckpointReadError:
  if isinstance(error, (EOFError, struct.error)) or "eof" in str(error).lower():
    return CheckpointReadError(f"checkpoint {path} is truncated ({one_line(error)}); "
                               "copy it again")
  return CheckpointReadError(f"{path} could not be read as a PyTorch checkpoint "
                             f"({one_line(error)})")


def _safetensors_header_size(head: bytes) -> int | None:
  """The JSON header length if `head` starts like a safetensors file, else None."""
  if len(head) < 9 or head[8:9] != b"{":
    return None
  return struct.unpack("<Q", head[:8])[0]


def _safetensors_load(path: Path, header_size: int) -> dict[str, Any]:
  """Checks the declared sizes against the file first: a cut file reads as truncated."""
  file_size = path.stat().st_size
  if 8 + header_size > file_size:
    raise CheckpointReadError(f"checkpoint {path} is truncated (its safetensors header "
                              f"needs {8 + header_size} bytes, the file has {file_size})")
  try:
    with open(path, "rb") as f:
      f.seek(8)
      header = json.loads(f.read(header_size))
    data_size = max((entry["data_offsets"][1] for name, entry in header.items()
                     if name != "__metadata__"), default=0)
  except (ValueError, KeyError, TypeError) as error:
    raise CheckpointReadError(
        f"{path} is not a valid safetensors file ({one_line(error)})") from error
  if 8 + header_size + data_size > file_size:
    raise CheckpointReadError(f"checkpoint {path} is truncated ({file_size} of "
                              f"{8 + header_size + data_size} bytes); copy it again")
  try:
    return tensor_files.read_safetensors(path, header_size, header)
  except tensor_files.NotReadableWithoutTorch:
    pass
  from safetensors.torch import load_file  # pylint: disable=import-outside-toplevel
  try:
    return load_file(path, device="cpu")
  except Exception as error:  # safetensors raises its own error type
    raise CheckpointReadError(
        f"{path} could not be read as safetensors ({one_line(error)})") from error


def _is_tensor(value: Any) -> bool:
  """An array, or a torch tensor (only a caller that imported torch can hold one)."""
  torch = sys.modules.get("torch")
  return isinstance(value, np.ndarray) or (torch is not None and isinstance(value, torch.Tensor))


def _is_state_dict(content: Any) -> bool:
  return (isinstance(content, Mapping) and bool(content)
          and all(_is_tensor(value) for value in content.values()))


def _unwrap(content: Any, where: str) -> tuple[dict[str, Any], str | None]:
  if _is_state_dict(content):
    return dict(content), None
  if isinstance(content, Mapping):
    for key in WRAPPER_KEYS:
      if _is_state_dict(content.get(key)):
        return dict(content[key]), key
    keys = ", ".join(map(str, list(content)[:5]))
    raise CheckpointReadError(
        f"{where} holds no state_dict: expected name -> tensor entries, or one under "
        f"{' / '.join(WRAPPER_KEYS)}; its top-level keys are: {keys or 'none'}")
  raise CheckpointReadError(f"{where} holds a {type(content).__name__}, not a state_dict")


def _strip_prefixes(state: dict[str, Any]) -> tuple[dict[str, Any], str]:
  """Strips wrapping prefixes shared by every name, outermost first ("module._orig_mod.")."""
  prefix = ""
  stripped = True
  while stripped:
    stripped = False
    for candidate in WRAPPING_PREFIXES:
      if all(name.startswith(prefix + candidate) for name in state):
        prefix += candidate
        stripped = True
        break
  return {name[len(prefix):]: tensor for name, tensor in state.items()}, prefix
