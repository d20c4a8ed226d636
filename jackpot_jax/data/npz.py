"""Datasets stored as one `.npz` file with arrays x_train, y_train, x_test, y_test."""

from __future__ import annotations

import numpy as np

from jackpot_jax import errors, fileio
from jackpot_jax.data.records import ArraySplit, SourceDataset

REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def _checked_split(source: str, split: str, images: np.ndarray,
                   labels: np.ndarray) -> ArraySplit:
  """Raises ValueError (one line, naming `source`) unless the arrays form a split."""
  if images.ndim == 3:
    images = images[..., None]
  if images.dtype != np.uint8 or images.ndim != 4 or images.shape[-1] not in (1, 3):
    raise ValueError(f"{source}: {split} images must be uint8 (N, H, W, 1 or 3), got "
                     f"{images.dtype} {images.shape}")
  if labels.ndim != 1 or len(labels) != len(images) or not np.issubdtype(labels.dtype,
                                                                           np.integer):
    raise ValueError(f"{source}: {split} labels must be integers of shape ({len(images)},), "
                     f"got {labels.dtype} {labels.shape}")
  if len(images) == 0:
    raise ValueError(f"{source}: the {split} split is empty")
  if labels.min() < 0:
    raise ValueError(f"{source}: {split} labels must be >= 0, found {labels.min()}")
  return ArraySplit(images, labels.astype(np.int32))


def load_npz(path: str) -> SourceDataset:
  """Opens an npz dataset; grayscale (N, H, W) images gain a channel axis.

  Images must be uint8 pixels of one shape in both splits; labels integers from 0, and
  the number of classes is the largest label plus one.

  Args:
    path: a local file or a gs:// object (downloaded to a temporary file to be read).

  Raises:
    ValueError (one line): the file is missing, lacks an array, or holds arrays of the
      wrong kind.
  """
  try:
    with fileio.local_file(fileio.as_path(path, "data.name"), "npz file") as local:
      if not local.is_file():
        raise errors.CheckpointNotFoundError(f"npz file {path} does not exist")
      return _read_npz(path, local)
  except errors.CheckpointNotFoundError as error:
    raise ValueError(f"npz file {path} does not exist; 'npz:<file>' needs a file with "
                     f"arrays {', '.join(REQUIRED_ARRAYS)}") from error


def _read_npz(path: str, local) -> SourceDataset:
  source = f"npz file {path}"
  with np.load(local, allow_pickle=False) as archive:
    missing = [name for name in REQUIRED_ARRAYS if name not in archive.files]
    if missing:
      raise ValueError(f"npz file {path} lacks {', '.join(missing)} (it has "
                       f"{', '.join(archive.files) or 'nothing'}); save x_train, y_train, "
                       "x_test, y_test")
    splits = {split: _checked_split(source, split, archive[f"x_{split}"], archive[f"y_{split}"])
              for split in ("train", "test")}
  train, test = splits["train"].images, splits["test"].images
  if train.shape[1:] != test.shape[1:]:
    raise ValueError(f"{source}: train images {train.shape[1:]} and test images "
                     f"{test.shape[1:]} differ in shape")
  num_classes = max(int(split.labels.max()) + 1 for split in splits.values())
  return SourceDataset(source, splits, tuple(str(label) for label in range(num_classes)))
