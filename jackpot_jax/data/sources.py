"""Loads in-memory datasets by kind, once per process."""

from __future__ import annotations

import dataclasses
import functools

from jackpot_jax.data import holdout
from jackpot_jax.data.arrays import ArrayDataset
from jackpot_jax.data.config import DatasetInfo, DataSpec
from jackpot_jax.data.image_folder import load_image_folder
from jackpot_jax.data.npz import load_npz
from jackpot_jax.data.tfds_source import load_tfds_arrays


@functools.lru_cache(maxsize=2)
def _load_cached(spec: DataSpec) -> ArrayDataset:
  if spec.kind == "npz":
    return load_npz(spec.source, spec.image_size)
  if spec.kind == "image_folder":
    return load_image_folder(spec.source, spec.channels, spec.image_size)
  return load_tfds_arrays(spec)


def load_arrays(spec: DataSpec) -> ArrayDataset:
  """The dataset of `spec` as arrays, decoded on first use and then shared.

  The cache key keeps only the fields that change the arrays, so a train iterator and an
  eval pass with different augmentation or prefetch settings share one copy.
  """
  return _load_cached(dataclasses.replace(
      spec, mean=None, std=None, augment="none", crop_padding=0, manual_dir=None, prefetch=0,
      shuffle_buffer=0, holdout_images=None))


def in_memory_info(spec: DataSpec, arrays: ArrayDataset) -> DatasetInfo:
  """DatasetInfo of loaded arrays."""
  held_out = holdout.holdout_count(spec.holdout_images, len(arrays.train_labels))
  return DatasetInfo(
      name=spec.name,
      num_classes=len(arrays.class_names),
      image_shape=tuple(arrays.train_images.shape[1:]),
      num_train=len(arrays.train_labels) - held_out,
      num_test=len(arrays.test_labels),
      class_names=arrays.class_names,
      num_holdout=held_out,
  )
