"""A dataset as named splits of random-access records: (uint8 (H, W, C) image, label).

Every source (TFDS array_record files, image folders, npz files) opens as a
`SourceDataset`; the Grain pipeline reads records by index, so nothing but the source's
own index (file names, an npz file's arrays) is held in memory. Splits are picklable
and open their files lazily, so they travel to Grain's worker processes.
"""

from __future__ import annotations

import dataclasses
from typing import Collection, Mapping, Protocol

import numpy as np

# Where a requested split is missing, the names tried in its place, in order.
_SPLIT_ALIASES = {"test": ("validation", "val"), "validation": ("val", "test"),
                  "val": ("validation", "test")}


class Split(Protocol):
  """Random access to one split's records."""

  def __len__(self) -> int:
    ...

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    """(uint8 (H, W, C) image, integer label) of record `index`."""

  def read(self, indices: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """The records at `indices`, in one read where the format batches reads."""


@dataclasses.dataclass(frozen=True)
class ArraySplit:
  """A split held as arrays: uint8 (N, H, W, C) images and integer labels."""
  images: np.ndarray
  labels: np.ndarray

  def __len__(self) -> int:
    return len(self.labels)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.images[index], int(self.labels[index])

  def read(self, indices: np.ndarray) -> list[tuple[np.ndarray, int]]:
    return list(zip(self.images[indices], self.labels[indices].tolist()))


def find_split(name: str, available: Collection[str], description: str) -> str:
  """The split `name` reads among `available`: itself, or for 'test' a 'validation' /
  'val' split where there is no test split.

  Raises:
    ValueError (one line): no such split, naming the ones there are.
  """
  for candidate in (name, *_SPLIT_ALIASES.get(name, ())):
    if candidate in available:
      return candidate
  there = ", ".join(sorted(available)) or "none"
  raise ValueError(f"{description} has no split {name!r} (it has {there}); set "
                   "data.train_split / data.eval_split to one of them")


@dataclasses.dataclass(frozen=True)
class SourceDataset:
  """The splits of one dataset, its class names, and how to name it in errors."""
  description: str
  splits: Mapping[str, Split]
  class_names: tuple[str, ...]

  def split_name(self, name: str) -> str:
    """The split `name` reads (see `find_split`)."""
    return find_split(name, self.splits, self.description)

  def split(self, name: str) -> Split:
    return self.splits[self.split_name(name)]
