"""PyTorch's zip checkpoints and safetensors files read into NumPy arrays without torch.

A search only reads its checkpoint, and importing torch costs a process about 1.5 s of
CPU before it has read a byte. This reads the two formats checkpoints come in today:
- PyTorch's zip format (`torch.save` since 1.6): a pickle (`<archive>/data.pkl`) whose
  tensors point at raw storages (`<archive>/data/<key>`). Its unpickler accepts only
  what a state_dict holds (tensors, containers, numbers, strings); anything else
  (quantized or sparse tensors, pickled Python objects, a big-endian file) raises
  `NotReadableWithoutTorch`, and the caller reads the file with torch instead, which
  also words the errors of damaged files.
- safetensors: a JSON header of name -> dtype, shape and byte range, then the bytes.
  (The safetensors package's NumPy loader has no bfloat16.)

Arrays come out in the file's dtype (bfloat16 as jnp.bfloat16), C-contiguous and
writable, bit for bit the file's values. A tensor that is its whole storage (a
state_dict's usual case) is the storage read once, without a copy, so a checkpoint takes
about its own size in memory; a view of part of a storage is copied out.
"""

from __future__ import annotations

import collections
import pickle
import zipfile
from pathlib import Path
from typing import Any

import jax.numpy as jnp
import numpy as np

# The typed storages `torch.save` names in its pickles, by their dtype.
_STORAGE_DTYPES = {
    "DoubleStorage": np.float64, "FloatStorage": np.float32, "HalfStorage": np.float16,
    "BFloat16Storage": jnp.bfloat16, "LongStorage": np.int64, "IntStorage": np.int32,
    "ShortStorage": np.int16, "CharStorage": np.int8, "ByteStorage": np.uint8,
    "BoolStorage": np.bool_,
}
_SAFETENSORS_DTYPES = {
    "F64": np.float64, "F32": np.float32, "F16": np.float16, "BF16": jnp.bfloat16,
    "I64": np.int64, "I32": np.int32, "I16": np.int16, "I8": np.int8, "U8": np.uint8,
    "BOOL": np.bool_,
}


class NotReadableWithoutTorch(Exception):
  """The file holds something this reader does not rebuild; torch must read it."""


class _Storage:
  """A storage the pickle names: which file of the archive, and its element type."""

  def __init__(self, dtype: Any):
    self.dtype = np.dtype(dtype)


def _rebuild_tensor(storage: np.ndarray, offset: int, size: tuple, stride: tuple,
                    requires_grad: bool = False, backward_hooks: Any = None,
                    metadata: Any = None) -> np.ndarray:
  """`torch._utils._rebuild_tensor_v2`: a strided view of a storage, copied."""
  del requires_grad, backward_hooks, metadata
  size, stride = tuple(size), tuple(stride)
  if len(size) != len(stride) or any(s < 0 for s in stride) or offset < 0:
    raise NotReadableWithoutTorch("a tensor with negative or mismatched strides")
  if 0 in size:
    return np.zeros(size, storage.dtype)
  if offset + sum((n - 1) * s for n, s in zip(size, stride)) >= storage.size:
    raise NotReadableWithoutTorch("a tensor beyond its storage")
  numel = int(np.prod(size, dtype=np.int64))
  if offset == 0 and numel == storage.size and stride == _contiguous_strides(size):
    return storage.reshape(size)  # the whole storage: no copy
  item = storage.itemsize
  view = np.lib.stride_tricks.as_strided(storage[offset:], shape=size,
                                         strides=tuple(s * item for s in stride),
                                         writeable=False)
  return np.array(view, order="C")


def _contiguous_strides(size: tuple) -> tuple:
  strides, step = [], 1
  for n in reversed(size):
    strides.append(step)
    step *= n
  return tuple(reversed(strides))


class _StateDictUnpickler(pickle.Unpickler):
  """The pickle of a zip checkpoint, with tensors rebuilt as arrays."""

  def __init__(self, file, archive: zipfile.ZipFile, prefix: str):
    super().__init__(file)
    self._archive, self._prefix = archive, prefix
    self._storages: dict[str, np.ndarray] = {}

  def find_class(self, module: str, name: str) -> Any:
    if module == "collections" and name == "OrderedDict":
      return collections.OrderedDict
    if module == "torch._utils" and name == "_rebuild_tensor_v2":
      return _rebuild_tensor
    if module == "torch" and name in _STORAGE_DTYPES:
      return _Storage(_STORAGE_DTYPES[name])
    raise NotReadableWithoutTorch(f"{module}.{name}")

  def persistent_load(self, pid: Any) -> np.ndarray:
    if not (isinstance(pid, tuple) and len(pid) == 5 and pid[0] == "storage"
            and isinstance(pid[1], _Storage)):
      raise NotReadableWithoutTorch(f"a storage reference {pid!r}")
    _, storage, key, _, numel = pid
    if key not in self._storages:
      data = bytearray(numel * storage.dtype.itemsize)
      with self._archive.open(f"{self._prefix}data/{key}") as stored:
        if stored.readinto(data) != len(data):
          raise NotReadableWithoutTorch(f"storage {key} is shorter than its elements")
      self._storages[key] = np.frombuffer(data, storage.dtype)
    return self._storages[key]


def read_torch_zip(path: Path) -> Any:
  """What `torch.load(path, weights_only=True)` returns, tensors as arrays.

  Raises:
    NotReadableWithoutTorch: the file is not a little-endian zip checkpoint of tensors,
      containers, numbers and strings.
  """
  try:
    with zipfile.ZipFile(path) as archive:
      pickles = [n for n in archive.namelist() if n.endswith("data.pkl") and n.count("/") == 1]
      if len(pickles) != 1:
        raise NotReadableWithoutTorch("no single <archive>/data.pkl")
      prefix = pickles[0][:-len("data.pkl")]
      if f"{prefix}byteorder" in archive.namelist():
        if archive.read(f"{prefix}byteorder").strip() != b"little":
          raise NotReadableWithoutTorch("a big-endian checkpoint")
      with archive.open(pickles[0]) as pickled:
        return _StateDictUnpickler(pickled, archive, prefix).load()
  except NotReadableWithoutTorch:
    raise
  except Exception as error:  # a damaged file: torch reads it again and words the error
    raise NotReadableWithoutTorch(str(error)) from error


def read_safetensors(path: Path, header_size: int, header: dict) -> dict[str, np.ndarray]:
  """A safetensors file's tensors, in the header's order; `header` is its parsed JSON.

  Raises:
    NotReadableWithoutTorch: a dtype without a NumPy type here (float8, ...).
  """
  entries = {name: entry for name, entry in header.items() if name != "__metadata__"}
  for entry in entries.values():
    if entry["dtype"] not in _SAFETENSORS_DTYPES:
      raise NotReadableWithoutTorch(f"safetensors dtype {entry['dtype']}")
  tensors = {}
  with open(path, "rb") as f:
    for name, entry in entries.items():
      begin, end = entry["data_offsets"]
      dtype = np.dtype(_SAFETENSORS_DTYPES[entry["dtype"]])
      shape = tuple(entry["shape"])
      if end - begin != dtype.itemsize * int(np.prod(shape, dtype=np.int64)):
        raise NotReadableWithoutTorch(f"{name}'s byte range does not match its shape")
      f.seek(8 + header_size + begin)
      tensors[name] = np.frombuffer(bytearray(f.read(end - begin)), dtype).reshape(shape)
  return tensors


def as_array(tensor: Any) -> np.ndarray:
  """An array as it is; a torch tensor as an array of the same dtype and bits (bfloat16
  included), sharing the tensor's memory where it is contiguous on the CPU, as torch's
  `.numpy()` does (a checkpoint torch read is not held twice)."""
  if isinstance(tensor, np.ndarray):
    return tensor
  import torch  # pylint: disable=import-outside-toplevel
  tensor = tensor.detach().cpu().contiguous()
  if tensor.dtype == torch.bfloat16:
    return tensor.view(torch.int16).numpy().view(jnp.bfloat16)
  return tensor.numpy()


def numpy_to_torch(array: np.ndarray) -> Any:
  """The inverse of `as_array`."""
  import torch  # pylint: disable=import-outside-toplevel
  array = np.array(array, order="C")
  if array.dtype == jnp.bfloat16:
    return torch.from_numpy(array.view(np.int16)).view(torch.bfloat16)
  return torch.from_numpy(array)
