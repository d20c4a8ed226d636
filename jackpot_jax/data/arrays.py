"""A dataset held in memory as numpy arrays, and the checks every in-memory source passes."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np


@dataclasses.dataclass(frozen=True)
class ArrayDataset:
  """uint8 NHWC images and int32 labels of the train and test splits.

  The arrays are read-only: they are cached and shared by every iterator of a process.
  """
  train_images: np.ndarray
  train_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray
  class_names: tuple[str, ...]

  def split(self, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images, labels) of 'train' or 'test'."""
    if split == "train":
      return self.train_images, self.train_labels
    if split == "test":
      return self.test_images, self.test_labels
    raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")

  @functools.cached_property
  def pixel_statistics(self) -> tuple[tuple[float, ...], tuple[float, ...]]:
    """Per-channel mean and std of the training pixels on the [0, 1] scale (computed once)."""
    pixels = self.train_images.reshape(-1, self.train_images.shape[-1])
    mean = pixels.mean(axis=0, dtype=np.float64) / 255.0
    # E[x^2] - E[x]^2 in float64 is exact enough for 8-bit pixels and avoids a float
    # copy of the whole dataset.
    mean_square = np.einsum("nc,nc->c", pixels, pixels, dtype=np.float64) / len(pixels) / 255.0**2
    std = np.sqrt(np.maximum(mean_square - mean**2, 1e-12))
    return tuple(mean.tolist()), tuple(std.tolist())


def make_array_dataset(source: str, train: tuple[np.ndarray, np.ndarray],
                       test: tuple[np.ndarray, np.ndarray],
                       class_names: tuple[str, ...]) -> ArrayDataset:
  """Checks shapes, dtypes and label ranges, then freezes the arrays.

  Raises:
    ValueError (one line, naming `source`): images not uint8 (N, H, W, C), labels not
      integers in [0, len(class_names)), counts that differ, or splits whose image
      shapes differ.
  """
  for split, (images, labels) in (("train", train), ("test", test)):
    if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
      raise ValueError(f"{source}: {split} images must be uint8 (N, H, W, 1 or 3), got "
                       f"{images.dtype} {images.shape}")
    if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype,
                                                                             np.integer):
      raise ValueError(f"{source}: {split} labels must be integers of shape "
                       f"({len(images)},), got {labels.dtype} {labels.shape}")
    if len(images) == 0:
      raise ValueError(f"{source}: the {split} split is empty")
    if labels.min() < 0 or labels.max() >= len(class_names):
      raise ValueError(f"{source}: {split} labels must lie in [0, {len(class_names)}), "
                       f"found [{labels.min()}, {labels.max()}]")
  if train[0].shape[1:] != test[0].shape[1:]:
    raise ValueError(f"{source}: train images {train[0].shape[1:]} and test images "
                     f"{test[0].shape[1:]} differ in shape")
  frozen = []
  for array in (*train, *test):
    array = np.ascontiguousarray(array) if array.dtype == np.uint8 else array.astype(np.int32)
    array.flags.writeable = False
    frozen.append(array)
  return ArrayDataset(*frozen, class_names=tuple(class_names))
