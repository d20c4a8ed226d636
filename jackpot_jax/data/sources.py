"""Opens the dataset of a `DataSpec` once per process and derives what every pipeline
needs of it: the searched and held-out rows, the batches' image shape, the
preprocessing (channels, normalisation, augmentation), and the `DatasetInfo`. Text
data opens through `text`."""

from __future__ import annotations

import dataclasses
import functools

import numpy as np

from jackpot_jax.data import (holdout, preprocessing as preprocessing_lib, split_slices, text,
                              transforms)
from jackpot_jax.data.config import TEXT_KINDS, DatasetInfo, DataSpec
from jackpot_jax.data.image_folder import open_image_folder
from jackpot_jax.data.npz import load_npz
from jackpot_jax.data.resolved_preprocessing import Preprocessing
from jackpot_jax.data.records import SourceDataset, Split


@dataclasses.dataclass(frozen=True)
class OpenedData:
  """A dataset ready for the pipelines.

  `shape` is the (H, W, C) of the records when the image size is unset (all must share
  it) and `image_shape` that of the batches; `searched` and `held_out` index the
  training split.
  """
  dataset: SourceDataset
  train_split: str
  train_rows: np.ndarray
  searched: np.ndarray
  held_out: np.ndarray
  shape: tuple[int, int, int]
  image_shape: tuple[int, int, int]
  preprocessing: Preprocessing

  def rows(self, split: str) -> tuple[Split, np.ndarray]:
    """(records, rows) of 'search', 'holdout' (the two partition the training split),
    'train' (all of it) or any split of the dataset ('test' falling back to
    'validation' / 'val'), each sliced where its name says so ('test[:2000]')."""
    if split in ("search", "holdout", "train"):
      records = self.dataset.splits[self.train_split]
      if split == "train":
        return records, self.train_rows
      return records, self.searched if split == "search" else self.held_out
    records = self.dataset.split(split_slices.parse(split, "data.eval_split").name)
    return records, split_slices.sliced_rows(split, "data.eval_split", len(records))


@dataclasses.dataclass(frozen=True)
class ChannelSplit:
  """A split whose images are converted to `channels` on read (data.channels set on a
  source stored with the other count); picklable like the split it wraps."""
  split: Split
  channels: int

  def __len__(self) -> int:
    return len(self.split)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.read(np.asarray([index]))[0]

  def read(self, indices: np.ndarray) -> list[tuple[np.ndarray, int]]:
    return [(transforms.to_channels(image, self.channels), label)
            for image, label in self.split.read(indices)]


def _open(spec: DataSpec) -> SourceDataset:
  if spec.kind == "image_folder":  # decoded to the channels asked for, or found
    return open_image_folder(spec.source, spec.channels)
  if spec.kind == "npz":
    dataset = load_npz(spec.source)
  else:
    # Imported on use: only TFDS names need tensorflow_datasets.
    from jackpot_jax.data.tfds_source import open_tfds  # pylint: disable=import-outside-toplevel
    dataset = open_tfds(spec)
  if spec.channels is None:
    return dataset
  return dataclasses.replace(dataset, splits={
      name: ChannelSplit(split, spec.channels) for name, split in dataset.splits.items()})


@functools.lru_cache(maxsize=4)
def _open_cached(spec: DataSpec) -> OpenedData:
  dataset = _open(spec)
  train_split = dataset.split_name(split_slices.parse(spec.train_split, "data.train_split").name)
  records = dataset.splits[train_split]
  train_rows = split_slices.sliced_rows(spec.train_split, "data.train_split", len(records))
  searched, held_out = holdout.partition(
      train_rows, holdout.holdout_count(spec.holdout_images, len(train_rows)))
  shape = tuple(records[0][0].shape)
  augmentation = preprocessing_lib.choose_augmentation(spec, shape)
  size = augmentation.image_size
  # Before the statistics are estimated: a folder that needs data.image_size fails fast.
  if size is None and spec.kind == "image_folder":
    reference = None
    for split in dataset.splits.values():
      reference = split.check_one_size(dataset.description, reference)
  image_shape = shape if size is None else (size, size, shape[-1])
  preprocessing = preprocessing_lib.resolve(spec, shape, records, augmentation)
  return OpenedData(dataset, train_split, train_rows, searched, held_out, shape, image_shape,
                    preprocessing)


def open_data(spec: DataSpec) -> OpenedData | text.OpenedText:
  """The opened dataset of `spec`, shared by every pipeline of the process.

  The cache key drops the fields that only change how batches are produced, so a train
  iterator and an evaluation with other prefetch or worker settings share one opening.
  """
  if spec.kind in TEXT_KINDS:
    return text.open_text(spec)
  return _open_cached(dataclasses.replace(spec, prefetch=0, workers=0, eval_split="test",
                                          manual_dir=None))


def dataset_info(spec: DataSpec) -> DatasetInfo | text.TextInfo:
  """Classes, batch image shape and split sizes of `spec`'s dataset (sequence counts for
  text data)."""
  if spec.kind in TEXT_KINDS:
    return text.text_info(spec)
  opened = open_data(spec)
  return DatasetInfo(
      name=spec.name,
      num_classes=len(opened.dataset.class_names),
      image_shape=opened.image_shape,
      num_train=len(opened.searched),
      num_test=len(opened.rows(spec.eval_split)[1]),
      class_names=opened.dataset.class_names,
      num_holdout=len(opened.held_out),
      preprocessing=opened.preprocessing,
  )
