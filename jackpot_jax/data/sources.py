"""Opens the dataset of a `DataSpec` once per process and derives what every pipeline
needs of it: the searched and held-out rows, the batches' image shape, the
normalisation, and the `DatasetInfo`."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jackpot_jax.data import holdout
from jackpot_jax.data.config import DatasetInfo, DataSpec
from jackpot_jax.data.image_folder import open_image_folder
from jackpot_jax.data.npz import load_npz
from jackpot_jax.data.records import SourceDataset, Split

# Training images the statistics of a dataset without data.mean / data.std are estimated
# from: every one of a smaller split, else this many evenly spaced ones (exact enough for
# a normalisation, and a bounded start-up cost on ImageNet-size folders).
STATISTICS_IMAGES = 5000

# Records read at once while estimating them: an uncached TFDS split reads a batch of
# keys in one call, much faster per record than one key at a time.
_STATISTICS_READ = 256

Statistics = tuple[tuple[float, ...], tuple[float, ...]]


@dataclasses.dataclass(frozen=True)
class OpenedData:
  """A dataset ready for the pipelines.

  `shape` is the (H, W, C) of the records when data.image_size is unset (all must share
  it) and `image_shape` that of the batches; `searched` and `held_out` index the
  training split.
  """
  dataset: SourceDataset
  train_split: str
  searched: np.ndarray
  held_out: np.ndarray
  shape: tuple[int, int, int]
  image_shape: tuple[int, int, int]
  statistics: Statistics

  def rows(self, split: str) -> tuple[Split, np.ndarray]:
    """(records, rows) of 'search', 'holdout' (the two partition the training split),
    'train' (all of it) or any split of the dataset ('test' falling back to
    'validation' / 'val')."""
    if split in ("search", "holdout", "train"):
      records = self.dataset.splits[self.train_split]
      if split == "train":
        return records, np.arange(len(records))
      return records, self.searched if split == "search" else self.held_out
    records = self.dataset.split(split)
    return records, np.arange(len(records))


def _open(spec: DataSpec) -> SourceDataset:
  if spec.kind == "npz":
    return load_npz(spec.source)
  if spec.kind == "image_folder":
    return open_image_folder(spec.source, spec.channels)
  # Imported on use: only TFDS names need tensorflow_datasets.
  from jackpot_jax.data.tfds_source import open_tfds  # pylint: disable=import-outside-toplevel
  return open_tfds(spec)


def _estimated_statistics(records: Split) -> Statistics:
  """Per-channel mean and std on the [0, 1] scale of (a sample of) the training images."""
  count = len(records)
  sample = np.unique(np.linspace(0, count - 1, min(count, STATISTICS_IMAGES)).astype(int))
  pixels, total, total_square = 0, 0.0, 0.0
  for start in range(0, len(sample), _STATISTICS_READ):
    for image, _ in records.read(sample[start:start + _STATISTICS_READ]):
      flat = image.reshape(-1, image.shape[-1]).astype(np.float64)
      pixels += len(flat)
      total = total + flat.sum(axis=0)
      total_square = total_square + np.einsum("nc,nc->c", flat, flat)
  mean = total / pixels / 255.0
  std = np.sqrt(np.maximum(total_square / pixels / 255.0**2 - mean**2, 1e-12))
  return tuple(mean.tolist()), tuple(std.tolist())


@functools.lru_cache(maxsize=4)
def _open_cached(spec: DataSpec) -> OpenedData:
  dataset = _open(spec)
  train_split = dataset.split_name(spec.train_split)
  records = dataset.splits[train_split]
  searched, held_out = holdout.partition(
      len(records), holdout.holdout_count(spec.holdout_images, len(records)))
  shape = tuple(records[0][0].shape)
  size = spec.image_size
  if size is None and spec.kind == "image_folder":
    reference = None
    for split in dataset.splits.values():
      reference = split.check_one_size(dataset.description, reference)
  image_shape = shape if size is None else (size, size, shape[-1])
  if spec.mean is None:
    statistics = _estimated_statistics(records)
  elif len(spec.mean) != shape[-1]:
    raise ValueError(f"data.mean has {len(spec.mean)} values but {spec.name} images have "
                     f"{shape[-1]} channels; give one mean and std per channel")
  else:
    statistics = (spec.mean, spec.std)
  return OpenedData(dataset, train_split, searched, held_out, shape, image_shape, statistics)


def open_data(spec: DataSpec) -> OpenedData:
  """The opened dataset of `spec`, shared by every pipeline of the process.

  The cache key drops the fields that only change how batches are produced, so a train
  iterator and an evaluation with other prefetch or worker settings share one opening.
  """
  return _open_cached(dataclasses.replace(spec, prefetch=0, workers=0, eval_split="test",
                                          manual_dir=None))


def dataset_info(spec: DataSpec) -> DatasetInfo:
  """Classes, batch image shape and split sizes of `spec`'s dataset."""
  opened = open_data(spec)
  return DatasetInfo(
      name=spec.name,
      num_classes=len(opened.dataset.class_names),
      image_shape=opened.image_shape,
      num_train=len(opened.searched),
      num_test=len(opened.rows(spec.eval_split)[1]),
      class_names=opened.dataset.class_names,
      num_holdout=len(opened.held_out),
  )
