"""Prepared TFDS datasets: the builder, split names, dataset info, and in-memory arrays.

Examples are read with `tfds.data_source` from array_record files, which needs no
TensorFlow: the search, evaluation and export processes never import it (TensorFlow
and XLA in one process means two sets of runtime thread pools, and GPU images do not
ship it). Only `python -m jackpot_jax.data.prepare` uses TensorFlow, to build or convert
a dataset into that format once.

Nothing here downloads: a dataset that is not prepared raises an error saying which
`python -m jackpot_jax.data.prepare` command prepares it, so training and tests never
touch the network by accident.
"""

from __future__ import annotations

from concurrent import futures
import os

import numpy as np
import tensorflow_datasets as tfds

from jackpot_jax.data import augment, holdout
from jackpot_jax.data.arrays import ArrayDataset, make_array_dataset
from jackpot_jax.data.config import DatasetInfo, DataSpec

# The file format the TensorFlow-free reader needs.
FILE_FORMAT = "array_record"
# Examples decoded per task when a split is read into memory: large enough to amortise
# the task, small enough to spread a 10,000-example split over every core.
_DECODE_CHUNK = 1024


def prepare_command(spec: DataSpec, data_dir: str) -> str:
  """The command that prepares (or converts) `spec`'s dataset for reading here."""
  command = f"python -m jackpot_jax.data.prepare --dataset={spec.source} --data_dir={data_dir}"
  if spec.source == "imagenet2012":
    command += " --manual_dir=<dir with ILSVRC2012_img_{train,val}.tar>"
  return command


def prepared_builder(spec: DataSpec) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `spec`, which must already be prepared in `spec.data_dir`.

  Raises:
    ValueError (one line): the dataset is not prepared, with the command that prepares it.
  """
  builder = tfds.builder(spec.source, data_dir=spec.data_dir)
  data_dir = os.fspath(builder.data_dir_root)
  if not builder.is_prepared():
    how = ("offline, from Debian's dataset-fashion-mnist files" if spec.source == "fashion_mnist"
           else "it downloads unless the dataset reads --manual_dir")
    raise ValueError(f"TFDS dataset {spec.source} is not prepared in {data_dir}; run "
                     f"`{prepare_command(spec, data_dir)}` ({how})")
  return builder


def array_record_builder(spec: DataSpec) -> tfds.core.DatasetBuilder:
  """The prepared dataset read from its own directory, checked to hold array_record files.

  Raises:
    ValueError (one line): as `prepared_builder`, or the files are in a format only
      TensorFlow reads, with the command that adds array_record files.
  """
  prepared = prepared_builder(spec)
  # The directory's own metadata lists every format its files exist in.
  builder = tfds.builder_from_directory(prepared.data_dir)
  formats = [f.value for f in (builder.info.file_format, *builder.info.alternative_file_formats)]
  if FILE_FORMAT not in formats:
    command = prepare_command(spec, os.fspath(prepared.data_dir_root))
    raise ValueError(f"TFDS dataset {spec.source} in {prepared.data_dir} is prepared as "
                     f"{formats[0]}, which needs TensorFlow to read; run `{command}` once to "
                     f"add {FILE_FORMAT} files beside it")
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
  num_train = builder.info.splits[tfds_split(builder, "train")].num_examples
  held_out = holdout.holdout_count(spec.holdout_images, num_train)
  return DatasetInfo(
      name=spec.name,
      num_classes=features["label"].num_classes,
      image_shape=(height, width, channels),
      num_train=num_train - held_out,
      num_test=builder.info.splits[tfds_split(builder, "test")].num_examples,
      class_names=tuple(features["label"].names),
      num_holdout=held_out,
  )


def _read_split(builder: tfds.core.DatasetBuilder, split: str) -> tuple[np.ndarray, np.ndarray]:
  """Decodes every example of one split, in the split's order, on a pool of threads.

  Image decoding (PIL) releases the GIL, so the threads share the cores.
  """
  source = builder.as_data_source(split=split, file_format=FILE_FORMAT)
  starts = range(0, len(source), _DECODE_CHUNK)

  def decode(start: int) -> list[dict]:
    return source.__getitems__(range(start, min(start + _DECODE_CHUNK, len(source))))

  with futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
    examples = [example for chunk in pool.map(decode, starts) for example in chunk]
  images = np.stack([example["image"] for example in examples])
  labels = np.asarray([example["label"] for example in examples], np.int32)
  return images, labels


def load_tfds_arrays(spec: DataSpec) -> ArrayDataset:
  """Decodes both splits of a small TFDS dataset into numpy, resized to `spec.image_size`."""
  builder = array_record_builder(spec)
  splits = []
  for split in ("train", "test"):
    images, labels = _read_split(builder, tfds_split(builder, split))
    if spec.image_size is not None:
      images = augment.resize(images, (spec.image_size, spec.image_size))
    splits.append((images, labels))
  class_names = tuple(builder.info.features["label"].names)
  return make_array_dataset(f"TFDS dataset {spec.source}", *splits, class_names)
