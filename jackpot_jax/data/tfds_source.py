"""Prepared TFDS datasets: the builder, split names, dataset info, and in-memory arrays.

Nothing here downloads: a dataset that is not prepared raises an error saying which
`python -m jackpot_jax.data.prepare` command prepares it, so training and tests never
touch the network by accident.
"""

from __future__ import annotations

import numpy as np
import tensorflow_datasets as tfds

from jackpot_jax.data import augment
from jackpot_jax.data.arrays import ArrayDataset, make_array_dataset
from jackpot_jax.data.config import DatasetInfo, DataSpec


def prepared_builder(spec: DataSpec) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `spec`, which must already be prepared in `spec.data_dir`.

  Raises:
    ValueError (one line): the dataset is not prepared, with the command that prepares it.
  """
  builder = tfds.builder(spec.source, data_dir=spec.data_dir)
  if not builder.is_prepared():
    data_dir = builder.data_dir_root
    command = f"python -m jackpot_jax.data.prepare --dataset={spec.source} --data_dir={data_dir}"
    if spec.source == "fashion_mnist":
      how = "offline, from Debian's dataset-fashion-mnist files"
    elif spec.source == "imagenet2012":
      how = "add --manual_dir=<dir with ILSVRC2012_img_{train,val}.tar>"
    else:
      how = "downloads it"
    raise ValueError(f"TFDS dataset {spec.source} is not prepared in {data_dir}; run "
                     f"`{command}` ({how})")
  return builder


def tfds_split(builder: tfds.core.DatasetBuilder, split: str) -> str:
  """Maps our 'train'/'test' to the builder's split; 'test' is 'validation' where a dataset
  has no labelled test split (imagenet2012)."""
  if split not in ("train", "test"):
    raise ValueError(f"unknown split {split!r}; use 'train' or 'test'")
  if split == "test" and "test" not in builder.info.splits:
    return "validation"
  return split


def tfds_info(spec: DataSpec) -> DatasetInfo:
  """DatasetInfo read from the builder's metadata, without loading any example."""
  builder = prepared_builder(spec)
  features = builder.info.features
  height, width, channels = features["image"].shape
  if spec.image_size is not None:
    height = width = spec.image_size
  return DatasetInfo(
      name=spec.name,
      num_classes=features["label"].num_classes,
      image_shape=(height, width, channels),
      num_train=builder.info.splits[tfds_split(builder, "train")].num_examples,
      num_test=builder.info.splits[tfds_split(builder, "test")].num_examples,
      class_names=tuple(features["label"].names),
  )


def load_tfds_arrays(spec: DataSpec) -> ArrayDataset:
  """Decodes both splits of a small TFDS dataset into numpy, resized to `spec.image_size`."""
  builder = prepared_builder(spec)
  splits = []
  for split in ("train", "test"):
    examples = tfds.as_numpy(builder.as_dataset(split=tfds_split(builder, split), batch_size=-1))
    images = examples["image"]
    if spec.image_size is not None:
      images = augment.resize(images, (spec.image_size, spec.image_size))
    splits.append((images, examples["label"].astype(np.int32)))
  class_names = tuple(builder.info.features["label"].names)
  return make_array_dataset(f"TFDS dataset {spec.source}", *splits, class_names)
