"""Datasets stored as one `.npz` file with arrays x_train, y_train, x_test, y_test."""

from __future__ import annotations

import os

import numpy as np

from jackpot_jax.data import augment
from jackpot_jax.data.arrays import ArrayDataset, make_array_dataset

REQUIRED_ARRAYS = ("x_train", "y_train", "x_test", "y_test")


def load_npz(path: str, image_size: int | None = None) -> ArrayDataset:
  """Loads an npz dataset; grayscale (N, H, W) images gain a channel axis.

  Images must be uint8 pixels; labels integers from 0, and the number of classes is the
  largest label plus one.

  Raises:
    ValueError (one line): the file is missing, lacks an array, or holds arrays of the
      wrong kind.
  """
  if not os.path.isfile(path):
    raise ValueError(f"npz file {path} does not exist; 'npz:<file>' needs a file with "
                     f"arrays {', '.join(REQUIRED_ARRAYS)}")
  with np.load(path, allow_pickle=False) as archive:
    missing = [name for name in REQUIRED_ARRAYS if name not in archive.files]
    if missing:
      raise ValueError(f"npz file {path} lacks {', '.join(missing)} (it has "
                       f"{', '.join(archive.files) or 'nothing'}); save x_train, y_train, "
                       "x_test, y_test")
    arrays = {name: archive[name] for name in REQUIRED_ARRAYS}
  splits = {}
  for split in ("train", "test"):
    images, labels = arrays[f"x_{split}"], arrays[f"y_{split}"]
    if images.ndim == 3:
      images = images[..., None]
    if image_size is not None and images.dtype == np.uint8 and images.ndim == 4:
      images = augment.resize(images, (image_size, image_size))
    splits[split] = (images, labels)
  num_classes = 0
  for _, labels in splits.values():
    if labels.size and np.issubdtype(labels.dtype, np.integer):
      num_classes = max(num_classes, int(labels.max()) + 1)
  class_names = tuple(str(label) for label in range(num_classes))
  return make_array_dataset(f"npz file {path}", splits["train"], splits["test"], class_names)
