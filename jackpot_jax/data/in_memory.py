"""Deterministic, resumable, host-sharded batches from an in-memory `ArrayDataset`.

The search trains on the training split less its held-out slice (`holdout`); the
'holdout' eval split is that slice. Determinism: step s of a run with seed k reads the
searched examples at positions [i * B, (i + 1) * B) of epoch e's permutation
(e, i = divmod(s, steps_per_epoch)), drawn from (k, e), and augments them with parameters drawn from (k, s). Nothing depends on
earlier steps, so a run resumed at `start_step=s` sees exactly the batches it would have
seen, and the global batch is the same for any number of hosts: host p takes rows
[p * B / P, (p + 1) * B / P) of it.
"""

from __future__ import annotations

from typing import Iterator

import numpy as np

from jackpot_jax.data import augment, holdout
from jackpot_jax.data.arrays import ArrayDataset
from jackpot_jax.data.config import DataSpec

Batch = dict[str, np.ndarray]
# Per-channel (mean, std) on the [0, 1] scale.
Statistics = tuple[tuple[float, ...], tuple[float, ...]]

# Separate RNG streams, so that the permutation and the augmentation never share draws.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1


def epoch_permutation(seed: int, epoch: int, count: int) -> np.ndarray:
  """The order of the training examples in `epoch`."""
  return np.random.default_rng([seed, _PERMUTATION_STREAM, epoch]).permutation(count)


def augment_train_images(images: np.ndarray, spec: DataSpec, rng: np.random.Generator,
                         global_size: int, host_rows: slice) -> np.ndarray:
  """Augments one host's rows of a global batch.

  Parameters are drawn for all `global_size` rows, then sliced, so every host draws the
  same numbers and each row's augmentation does not depend on the host count.

  Returns:
    float32 images on the [0, 255] scale.
  """
  _, height, width, _ = images.shape
  if spec.augment == "cifar":
    offsets, flips = augment.sample_pad_crop_flip(rng, global_size, spec.crop_padding)
    return augment.pad_crop_flip(images, offsets[host_rows], flips[host_rows],
                                 spec.crop_padding).astype(np.float32)
  if spec.augment == "imagenet":
    boxes = augment.sample_resized_crop_boxes(rng, global_size, height, width)
    flips = rng.random(global_size) < 0.5
    return augment.crop_and_resize(images, boxes[host_rows], (height, width), flips[host_rows])
  return images.astype(np.float32)


def eval_images(images: np.ndarray, spec: DataSpec) -> np.ndarray:
  """The deterministic eval transform: the ImageNet recipe's centre crop, else none."""
  if spec.augment == "imagenet":
    count, height, width, _ = images.shape
    boxes = augment.center_crop_boxes(count, height, width, augment.EVAL_CROP_FRACTION)
    return augment.crop_and_resize(images, boxes, (height, width))
  return images.astype(np.float32)


def split_rows(arrays: ArrayDataset, spec: DataSpec,
               split: str) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """(images, labels, rows): `split` is images[rows]. 'search' and 'holdout' partition the
  training split; 'train' and 'test' are whole splits."""
  source = "train" if split in ("search", "holdout") else split
  images, labels = arrays.split(source)
  if source == split:
    return images, labels, np.arange(len(labels))
  searched, held_out = holdout.partition(
      len(labels), holdout.holdout_count(spec.holdout_images, len(labels)))
  return images, labels, searched if split == "search" else held_out


def train_batches(arrays: ArrayDataset, spec: DataSpec, statistics: Statistics, *,
                  batch_size: int, seed: int, start_step: int, process_index: int,
                  process_count: int) -> Iterator[Batch]:
  """Endless training batches from `start_step` on: this host's rows of each global batch.

  Args:
    batch_size: the global batch size; each host yields batch_size // process_count rows.
  """
  images, labels, searched = split_rows(arrays, spec, "search")
  steps_per_epoch = len(searched) // batch_size
  if steps_per_epoch == 0:
    raise ValueError(f"batch_size {batch_size} exceeds the {len(searched)} searched training "
                     f"examples of {spec.name}")
  host_size = batch_size // process_count
  host_rows = slice(process_index * host_size, (process_index + 1) * host_size)
  mean, std = statistics

  def stream() -> Iterator[Batch]:
    order, order_epoch = None, None
    step = start_step
    while True:
      epoch, index_in_epoch = divmod(step, steps_per_epoch)
      if epoch != order_epoch:
        order = searched[epoch_permutation(seed, epoch, len(searched))]
        order_epoch = epoch
      rows = order[index_in_epoch * batch_size:(index_in_epoch + 1) * batch_size][host_rows]
      rng = np.random.default_rng([seed, _AUGMENTATION_STREAM, step])
      batch_images = augment_train_images(images[rows], spec, rng, batch_size, host_rows)
      yield {"image": augment.normalise(batch_images, mean, std), "label": labels[rows]}
      step += 1

  # Returning an inner generator makes the checks above fail at the call, not at the
  # first batch.
  return stream()


def eval_batches(arrays: ArrayDataset, spec: DataSpec, statistics: Statistics, split: str, *,
                 batch_size: int, process_index: int, process_count: int) -> Iterator[Batch]:
  """One pass over `split` in order, every example exactly once across hosts.

  Global batch b holds examples [b * batch_size, (b + 1) * batch_size); each host yields
  its rows of it. The last global batch is padded with zero images whose 'mask' is
  False, so every host yields the same number of equally shaped batches and metrics
  weighted by 'mask' count only real examples.
  """
  images, labels, split_index = split_rows(arrays, spec, split)
  count = len(split_index)
  host_size = batch_size // process_count
  mean, std = statistics

  def stream() -> Iterator[Batch]:
    for start in range(0, count, batch_size):
      positions = start + process_index * host_size + np.arange(host_size)
      mask = positions < count
      rows = split_index[np.where(mask, positions, 0)]
      batch_images = augment.normalise(eval_images(images[rows], spec), mean, std)
      batch_images[~mask] = 0.0
      yield {"image": batch_images, "label": np.where(mask, labels[rows], 0).astype(np.int32),
             "mask": mask}

  return stream()
