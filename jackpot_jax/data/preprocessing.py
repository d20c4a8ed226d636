"""What a dataset's images go through on their way to the model, and where each choice
came from: the channel count, the normalisation statistics, the augmentation and the size.

A data.* field the config sets wins ('config'). One left None follows the data, so a
config written for one dataset brings the right preprocessing to another data.name: a
known TFDS dataset gets its standard statistics and augmentation ('standard:<name>',
those its usual recipes train with); any other gets statistics estimated from its
training images and the CIFAR recipe up to CIFAR_MAX_SIZE px, the ImageNet one above.
The channel count is the data's own (image folders: their images' modes).
"""

from __future__ import annotations

from typing import NamedTuple

import numpy as np

from jackpot_jax.config_defaults import STANDARD_STATISTICS
from jackpot_jax.data import transforms
from jackpot_jax.data.config import STANDARD_AUGMENTATION, DataSpec, standard_dataset
from jackpot_jax.data.records import Split
from jackpot_jax.data.resolved_preprocessing import Preprocessing

# The largest image side that gets the CIFAR recipe (pad and crop at the native size)
# when nothing sets data.augment: 64 px covers CIFAR, Fashion-MNIST and downsampled
# ImageNet variants; larger images get ImageNet's random-resized crops.
CIFAR_MAX_SIZE = 64

# Training images the statistics of a dataset without data.mean / data.std are estimated
# from: every one of a smaller split, else this many evenly spaced ones (exact enough for
# a normalisation, and a bounded start-up cost on ImageNet-size folders).
STATISTICS_IMAGES = 5000

# Records read at once while estimating them: an uncached TFDS split reads a batch of
# keys in one call, much faster per record than one key at a time.
_STATISTICS_READ = 256

# Where a source's own channel count comes from, by data kind.
_CHANNELS_FROM = {"image_folder": "image modes", "npz": "npz arrays",
                  "tfds": "TFDS image feature"}

Statistics = tuple[tuple[float, ...], tuple[float, ...]]


class Augmentation(NamedTuple):
  """An augmentation, where it came from, and the square side it crops or resizes to
  (None: the images' own size)."""
  augment: str
  augment_from: str
  image_size: int | None


def estimate_statistics(records: Split) -> tuple[Statistics, int]:
  """Per-channel (mean, std) on the [0, 1] scale of (a sample of) the training images,
  and how many images that sample holds."""
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
  return (tuple(mean.tolist()), tuple(std.tolist())), len(sample)


def choose_augmentation(spec: DataSpec, shape: tuple[int, int, int]) -> Augmentation:
  """The augmentation of records of (H, W, C) `shape`.

  The size the rule compares is data.image_size when set, else the images' longer side;
  an augmentation with a default size (the ImageNet recipe's 224) crops to it unless
  data.image_size says.
  """
  standard = standard_dataset(spec)
  if spec.augment is not None:
    augment, origin = spec.augment, "config"
  elif standard in STANDARD_AUGMENTATION:
    augment, origin = STANDARD_AUGMENTATION[standard], f"standard:{standard}"
  else:
    side = spec.image_size or max(shape[:2])
    small = side <= CIFAR_MAX_SIZE
    augment = "cifar" if small else "imagenet"
    origin = f"image size {side} px {'<=' if small else '>'} {CIFAR_MAX_SIZE}"
  image_size = spec.image_size
  if image_size is None:
    image_size = transforms.AUGMENTATION_REGISTRY.get(augment).default_size
  return Augmentation(augment, origin, image_size)


def _statistics(spec: DataSpec, channels: int, records: Split) -> tuple[Statistics, str]:
  if spec.mean is not None:
    if len(spec.mean) != channels:
      convert = (f", or set data.channels={len(spec.mean)} to convert the images"
                 if len(spec.mean) in (1, 3) else "")
      raise ValueError(f"data.mean has {len(spec.mean)} values but {spec.name} images have "
                       f"{channels} channels; give one mean and std per channel{convert}")
    return (spec.mean, spec.std), "config"
  standard = standard_dataset(spec)
  # A standard made for other channels (data.channels converting the images) does not
  # describe them.
  if standard in STANDARD_STATISTICS and len(STANDARD_STATISTICS[standard][0]) == channels:
    return STANDARD_STATISTICS[standard], f"standard:{standard}"
  statistics, count = estimate_statistics(records)
  return statistics, f"estimated from {count} training images"


def resolve(spec: DataSpec, shape: tuple[int, int, int], records: Split,
            augmentation: Augmentation | None = None) -> Preprocessing:
  """The preprocessing of `spec` for training `records` of (H, W, C) `shape` (their
  channels already data.channels where it is set).

  Args:
    augmentation: `choose_augmentation(spec, shape)`, when the caller has it already.
  Raises:
    ValueError (one line): data.mean does not have one value per channel of the images.
  """
  augment, augment_from, image_size = augmentation or choose_augmentation(spec, shape)
  channels = shape[-1]
  (mean, std), statistics = _statistics(spec, channels, records)
  return Preprocessing(
      channels=channels,
      channels_from="config" if spec.channels is not None else _CHANNELS_FROM[spec.kind],
      mean=tuple(mean), std=tuple(std), statistics=statistics,
      augment=augment, augment_from=augment_from, image_size=image_size,
      crop_padding=spec.crop_padding)
