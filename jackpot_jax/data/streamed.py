"""Streamed TFDS datasets (imagenet2012): tf.data pipelines that decode and augment JPEGs.

Too large to hold in memory, these are read with tf.data. Each host reads its own
1/process_count of the examples (tfds.split_for_jax_process), so a global batch is the
union of the hosts' batches. Order and augmentation are deterministic for a seed: file
order and shuffle buffer are seeded, tf.data runs with deterministic options, and each
example is augmented with a stateless seed made of (seed, host, its index in the host's
stream). Resuming at step s skips s * host_batch examples before they are decoded, so it
costs reading them, not decoding them.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np
import tensorflow as tf
import tensorflow_datasets as tfds

from jackpot_jax.data import augment, holdout
from jackpot_jax.data.config import DataSpec
from jackpot_jax.data.tfds_source import prepared_builder, tfds_split

Batch = dict[str, np.ndarray]


def _deterministic_options() -> tf.data.Options:
  options = tf.data.Options()
  options.deterministic = True
  return options


def _normalise(image: tf.Tensor, spec: DataSpec) -> tf.Tensor:
  mean = tf.constant(spec.mean, tf.float32)
  std = tf.constant(spec.std, tf.float32)
  return (image / 255.0 - mean) / std


def _train_image(image_bytes: tf.Tensor, example_seed: tf.Tensor, size: int) -> tf.Tensor:
  """Random-resized crop (decoding only the crop) to size x size, then a random flip."""
  crop_seed, flip_seed = tf.unstack(tf.random.experimental.stateless_split(example_seed, 2))
  whole_image = tf.constant([0.0, 0.0, 1.0, 1.0], tf.float32, shape=[1, 1, 4])
  begin, crop_size, _ = tf.image.stateless_sample_distorted_bounding_box(
      tf.image.extract_jpeg_shape(image_bytes), bounding_boxes=whole_image, seed=crop_seed,
      min_object_covered=0.0, aspect_ratio_range=augment.RESIZED_CROP_RATIO,
      area_range=augment.RESIZED_CROP_SCALE, max_attempts=10,
      use_image_if_no_bounding_boxes=True)
  top, left, _ = tf.unstack(begin)
  height, width, _ = tf.unstack(crop_size)
  image = tf.image.decode_and_crop_jpeg(image_bytes, tf.stack([top, left, height, width]),
                                        channels=3)
  image = tf.image.resize(image, [size, size], method="bilinear")
  return tf.image.stateless_random_flip_left_right(image, flip_seed)


def _eval_image(image_bytes: tf.Tensor, size: int) -> tf.Tensor:
  """Centre crop of EVAL_CROP_FRACTION of the shorter side, resized to size x size: the
  same pixels as resizing to size * 256 / 224 and centre-cropping size."""
  height, width, _ = tf.unstack(tf.image.extract_jpeg_shape(image_bytes))
  crop = tf.cast(tf.cast(tf.minimum(height, width), tf.float32) * augment.EVAL_CROP_FRACTION,
                 tf.int32)
  window = tf.stack([(height - crop) // 2, (width - crop) // 2, crop, crop])
  image = tf.image.decode_and_crop_jpeg(image_bytes, window, channels=3)
  return tf.image.resize(image, [size, size], method="bilinear", antialias=True)


def _split_name(builder: tfds.core.DatasetBuilder, spec: DataSpec, split: str) -> str:
  """The TFDS split string of 'search' (the training split less its first N examples, the
  held-out slice), 'holdout' (those N), or a whole 'train' / 'test' split."""
  if split not in ("search", "holdout"):
    return tfds_split(builder, split)
  name = tfds_split(builder, "train")
  count = holdout.holdout_count(spec.holdout_images, builder.info.splits[name].num_examples)
  return f"{name}[{count}:]" if split == "search" else f"{name}[:{count}]"


def train_batches(spec: DataSpec, *, batch_size: int, seed: int, start_step: int,
                  process_index: int, process_count: int) -> Iterator[Batch]:
  """Endless training batches of batch_size // process_count examples for this host."""
  builder = prepared_builder(spec)
  host_size = batch_size // process_count
  split = tfds.split_for_jax_process(_split_name(builder, spec, "search"),
                                     process_index=process_index,
                                     process_count=process_count, drop_remainder=True)
  read_config = tfds.ReadConfig(shuffle_seed=seed, shuffle_reshuffle_each_iteration=True,
                                options=_deterministic_options())
  dataset = builder.as_dataset(split=split, shuffle_files=True, read_config=read_config,
                               decoders={"image": tfds.decode.SkipDecoding()})
  dataset = dataset.repeat().shuffle(spec.shuffle_buffer, seed=seed,
                                     reshuffle_each_iteration=True)
  dataset = dataset.enumerate().skip(start_step * host_size)
  host_seed = tf.constant([seed, process_index], tf.int64)

  def preprocess(index, example):
    example_seed = tf.random.experimental.stateless_fold_in(host_seed, index)
    image = _train_image(example["image"], example_seed, spec.image_size)
    return {"image": _normalise(image, spec), "label": tf.cast(example["label"], tf.int32)}

  dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE)
  dataset = dataset.batch(host_size, drop_remainder=True).prefetch(tf.data.AUTOTUNE)
  return iter(tfds.as_numpy(dataset.with_options(_deterministic_options())))


def eval_batches(spec: DataSpec, split: str, *, batch_size: int, process_index: int,
                 process_count: int) -> Iterator[Batch]:
  """One ordered pass over this host's share of `split`, padded like the in-memory one.

  Every host yields ceil(ceil(N / process_count) / host_batch) batches, the missing rows
  as zero images with 'mask' False, so hosts stay in step in collective evaluation.
  """
  builder = prepared_builder(spec)
  host_size = batch_size // process_count
  name = _split_name(builder, spec, split)
  largest_share = -(-builder.info.splits[name].num_examples // process_count)
  num_batches = -(-largest_share // host_size)
  host_split = tfds.split_for_jax_process(name, process_index=process_index,
                                          process_count=process_count)
  dataset = builder.as_dataset(split=host_split, shuffle_files=False,
                               decoders={"image": tfds.decode.SkipDecoding()})

  def preprocess(example):
    image = _eval_image(example["image"], spec.image_size)
    return {"image": _normalise(image, spec), "label": tf.cast(example["label"], tf.int32)}

  dataset = dataset.map(preprocess, num_parallel_calls=tf.data.AUTOTUNE).batch(host_size)
  dataset = dataset.prefetch(tf.data.AUTOTUNE).with_options(_deterministic_options())
  image_shape = (host_size, spec.image_size, spec.image_size, 3)

  def stream() -> Iterator[Batch]:
    yielded = 0
    for batch in tfds.as_numpy(dataset):
      real = len(batch["label"])
      image = np.zeros(image_shape, np.float32)
      image[:real] = batch["image"]
      label = np.zeros(host_size, np.int32)
      label[:real] = batch["label"]
      yield {"image": image, "label": label, "mask": np.arange(host_size) < real}
      yielded += 1
    for _ in range(yielded, num_batches):
      yield {"image": np.zeros(image_shape, np.float32), "label": np.zeros(host_size, np.int32),
             "mask": np.zeros(host_size, bool)}

  return stream()
