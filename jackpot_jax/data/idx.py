"""Reads IDX files, the MNIST family's array format, gzipped or not, into numpy arrays."""

from __future__ import annotations

import gzip
import math
import os
import struct

import numpy as np

# The third magic byte names the element type; multi-byte types are big-endian.
_IDX_DTYPES = {
    0x08: np.dtype(np.uint8),
    0x09: np.dtype(np.int8),
    0x0B: np.dtype(">i2"),
    0x0C: np.dtype(">i4"),
    0x0D: np.dtype(">f4"),
    0x0E: np.dtype(">f8"),
}


def read_idx(path: str | os.PathLike) -> np.ndarray:
  """Returns the array stored in an IDX file (`.gz` files are decompressed on the fly).

  Raises:
    ValueError: the file is not an IDX file or is shorter than its header says.
  """
  opener = gzip.open if os.fspath(path).endswith(".gz") else open
  with opener(path, "rb") as f:
    data = f.read()
  if len(data) < 4 or data[0] or data[1] or data[2] not in _IDX_DTYPES:
    raise ValueError(f"{path} is not an IDX file (magic bytes {data[:4].hex()}); "
                     "pass an MNIST-format file")
  ndim = data[3]
  header_size = 4 + 4 * ndim
  shape = struct.unpack(f">{ndim}I", data[4:header_size])
  dtype = _IDX_DTYPES[data[2]]
  expected_size = math.prod(shape) * dtype.itemsize
  if len(data) - header_size != expected_size:
    raise ValueError(f"{path} holds {len(data) - header_size} data bytes but its header "
                     f"promises {expected_size}; the file is truncated or corrupt")
  array = np.frombuffer(data, dtype, offset=header_size).reshape(shape)
  return array.astype(dtype.newbyteorder("="))
