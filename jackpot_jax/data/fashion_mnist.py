"""Fashion-MNIST from local IDX files, and an offline build of the TFDS `fashion_mnist` dataset.

Debian's `dataset-fashion-mnist` ships the original four IDX files but recompressed, so
TFDS's registered checksums reject them. Rather than skip verification, the build below
never downloads: it is TFDS's own `fashion_mnist` builder whose examples are read from the
local files, so the prepared directory is the one `tfds.builder('fashion_mnist',
data_dir=...)` and `tfds.load` read afterwards.
"""

from __future__ import annotations

import os
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from jackpot_jax.config_defaults import STANDARD_STATISTICS
from jackpot_jax.data.idx import read_idx

DEBIAN_SOURCE_DIR = "/usr/share/datasets/fashion-mnist"

# Pixel statistics of the 60,000 training images scaled to [0, 1], computed from the
# Debian files (0.28604, 0.35302); the values the literature uses.
MEAN, STD = STANDARD_STATISTICS["fashion_mnist"]

_SOURCE_FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def source_paths(source_dir: str | os.PathLike, split: str) -> tuple[str, str]:
  """Paths of the (images, labels) IDX files of `split` ('train' or 'test')."""
  return tuple(os.path.join(source_dir, name) for name in _SOURCE_FILES[split])


def check_source_dir(source_dir: str | os.PathLike) -> None:
  """Raises a one-line ValueError naming the first Fashion-MNIST file missing in `source_dir`."""
  for split in _SOURCE_FILES:
    for path in source_paths(source_dir, split):
      if not os.path.isfile(path):
        raise ValueError(f"Fashion-MNIST source file {path} is missing; install Debian's "
                         "dataset-fashion-mnist or pass the directory holding the four "
                         "*-ubyte.gz files")


def read_fashion_mnist(source_dir: str | os.PathLike,
                       split: str) -> tuple[np.ndarray, np.ndarray]:
  """Reads one split from the IDX files.

  Returns:
    images: uint8 (N, 28, 28, 1); labels: int64 (N,).
  """
  check_source_dir(source_dir)
  images_path, labels_path = source_paths(source_dir, split)
  images, labels = read_idx(images_path), read_idx(labels_path)
  if images.ndim != 3 or labels.shape != images.shape[:1]:
    raise ValueError(f"{images_path} and {labels_path} do not hold matching image and "
                     f"label arrays (shapes {images.shape}, {labels.shape})")
  return images[..., None], labels.astype(np.int64)


class _LocalFashionMNIST(tfds.image_classification.FashionMNIST, skip_registration=True):
  """TFDS's `fashion_mnist` builder whose examples come from local IDX files.

  It inherits the registered builder's name, version, features and example keys (so the
  prepared data is laid out and shuffled exactly as TFDS's own); only the source of the
  bytes changes, and no download manager, URL or checksum is involved.
  """

  name = "fashion_mnist"

  def __init__(self, *, source_dir: str | os.PathLike, **kwargs):
    self._source_dir = source_dir
    super().__init__(**kwargs)

  def _split_generators(self, dl_manager):
    del dl_manager  # Everything is read from `source_dir`.
    return {split: self._generate_examples(split) for split in _SOURCE_FILES}

  def _generate_examples(self, split: str) -> Iterator[tuple[int, dict]]:
    images, labels = read_fashion_mnist(self._source_dir, split)
    for index, (image, label) in enumerate(zip(images, labels)):
      yield index, {"image": image, "label": int(label)}


def prepare_fashion_mnist(data_dir: str | os.PathLike | None = None,
                          source_dir: str | os.PathLike = DEBIAN_SOURCE_DIR) -> str:
  """Builds TFDS's `fashion_mnist` in `data_dir` from local IDX files, with no network.

  Idempotent: an already prepared dataset is left as it is (and the source files are not
  needed then). A new one is written as array_record files; `jackpot_jax.data.prepare`
  adds them to one prepared earlier as tfrecord.

  Args:
    data_dir: TFDS data directory; None means TFDS's default (`$TFDS_DATA_DIR` or
      ~/tensorflow_datasets).
    source_dir: directory holding the four `*-ubyte.gz` files.

  Returns:
    The prepared dataset's directory, `<data_dir>/fashion_mnist/<version>`.
  """
  builder = _LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir)
  if not builder.is_prepared():
    check_source_dir(source_dir)
    # array_record: the format `tfds.data_source` reads without TensorFlow.
    builder = _LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir,
                                 file_format="array_record")
    builder.download_and_prepare(
        download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return os.fspath(builder.data_dir)
