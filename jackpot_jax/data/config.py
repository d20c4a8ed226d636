"""The data config's validated form (`DataSpec`) and a dataset's shape (`DatasetInfo`).

The fields and their defaults are declared in `config_defaults` (data.*). Names:
'fashion_mnist' | 'cifar10' | 'cifar100' | 'imagenet2012' (TFDS), 'image_folder:<root>'
(root/train/<class>/... plus root/val/ or root/test/) or 'npz:<file>' (uint8 x_train, y_train,
x_test, y_test). A mean/std of None means the standard statistics of a TFDS name, or
statistics computed from the training images of a folder or npz file.
"""

from __future__ import annotations

import dataclasses
import os
from typing import Any, Mapping

import ml_collections

from jackpot_jax import config_defaults, fileio
from jackpot_jax.config_defaults import STANDARD_STATISTICS

AUGMENTATIONS = ("cifar", "imagenet", "none")

# Streamed with tf.data from TFDS; every other dataset is loaded into memory once.
STREAMED_TFDS_NAMES = ("imagenet2012",)
IN_MEMORY_TFDS_NAMES = ("fashion_mnist", "cifar10", "cifar100")

_STANDARD_AUGMENTATION = {
    "fashion_mnist": "cifar", "cifar10": "cifar", "cifar100": "cifar",
    "imagenet2012": "imagenet",
}
IMAGENET_DEFAULT_SIZE = 224


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and a training loop need to know about a dataset.

  `image_shape` is (H, W, C) of the batches the iterators yield; `num_train` counts the
  training images the search sees, `num_holdout` those held out of it for its
  evaluations (see `holdout`), `num_test` the evaluation split (imagenet2012's
  validation split).
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  class_names: tuple[str, ...]
  num_holdout: int = 0


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A validated data config: `kind` is 'tfds', 'npz' or 'image_folder'; `source` is the
  TFDS name, npz file or folder root."""
  name: str
  kind: str
  source: str
  mean: tuple[float, ...] | None
  std: tuple[float, ...] | None
  image_size: int | None
  augment: str
  crop_padding: int
  channels: int | None
  data_dir: str | None
  manual_dir: str | None
  prefetch: int
  shuffle_buffer: int
  holdout_images: int | None = None

  @property
  def streamed(self) -> bool:
    return self.kind == "tfds" and self.source in STREAMED_TFDS_NAMES


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """A data config for `name`: the declared defaults of `config_defaults`, with the
  standard statistics and augmentation of TFDS names ('none' augmentation and statistics
  computed from the images for folders and npz files)."""
  values = dict(config_defaults.base_config().data)
  mean, std = STANDARD_STATISTICS.get(name, (None, None))
  values.update(name=name, mean=mean, std=std,
                image_size=IMAGENET_DEFAULT_SIZE if name in STREAMED_TFDS_NAMES else None,
                augment=_STANDARD_AUGMENTATION.get(name, "none"))
  return ml_collections.ConfigDict(values)


def _parse_name(name: str) -> tuple[str, str]:
  if name in IN_MEMORY_TFDS_NAMES or name in STREAMED_TFDS_NAMES:
    return "tfds", name
  for kind in ("image_folder", "npz"):
    prefix = kind + ":"
    if name.startswith(prefix) and len(name) > len(prefix):
      return kind, os.path.expanduser(name[len(prefix):])
  known = ", ".join(IN_MEMORY_TFDS_NAMES + STREAMED_TFDS_NAMES)
  raise ValueError(f"unknown dataset name {name!r}; use one of {known}, "
                   "'image_folder:<root>' or 'npz:<file>'")


def _optional_floats(value: Any) -> tuple[float, ...] | None:
  return None if value is None else tuple(float(v) for v in value)


def _optional_int(value: Any, key: str) -> int | None:
  if value is None:
    return None
  if isinstance(value, bool) or int(value) != value:
    raise ValueError(f"{key} must be a whole number or None, got {value!r}")
  return int(value)


def resolve_spec(data_config: Mapping[str, Any] | ml_collections.ConfigDict) -> DataSpec:
  """Validates a data config and fills unset fields with their defaults.

  Raises:
    ValueError: unknown name or augmentation, or mean/std of different lengths.
  """
  name = data_config.get("name")
  if not isinstance(name, str):
    raise ValueError(f"data.name must be a string, got {name!r}")
  kind, source = _parse_name(name)
  defaults = default_data_config(name)

  def field(key: str) -> Any:
    value = data_config.get(key)
    return defaults[key] if value is None else value

  augment = field("augment")
  if augment not in AUGMENTATIONS:
    raise ValueError(f"unknown data.augment {augment!r}; use one of {', '.join(AUGMENTATIONS)}")
  mean, std = _optional_floats(field("mean")), _optional_floats(field("std"))
  if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):
    raise ValueError(f"data.mean {mean} and data.std {std} must both be set, with one value "
                     "per channel, or both be None")
  if std is not None and min(std) <= 0:
    raise ValueError(f"data.std {std} must be positive")
  image_size = data_config.get("image_size")
  if kind == "tfds" and source in STREAMED_TFDS_NAMES and image_size is None:
    image_size = IMAGENET_DEFAULT_SIZE
  channels = data_config.get("channels")
  if kind == "image_folder" and channels is None:
    channels = len(mean) if mean is not None else 3
  if channels is not None and channels not in (1, 3):
    raise ValueError(f"data.channels must be 1 or 3, got {channels}")
  data_dir = data_config.get("data_dir")
  manual_dir = data_config.get("manual_dir")
  for what, path in (("data.name", source), ("data.data_dir", data_dir),
                     ("data.manual_dir", manual_dir)):
    if path is not None and fileio.is_cloud(path):
      raise ValueError(f"{what} {path} is in a bucket; the input pipeline reads local files "
                       "only: copy the data to local disk or mount the bucket (gcsfuse)")
  return DataSpec(
      name=name,
      kind=kind,
      source=source,
      mean=mean,
      std=std,
      image_size=None if image_size is None else int(image_size),
      augment=augment,
      crop_padding=int(field("crop_padding")),
      channels=channels,
      data_dir=None if data_dir is None else os.path.expanduser(data_dir),
      manual_dir=None if manual_dir is None else os.path.expanduser(manual_dir),
      prefetch=int(field("prefetch")),
      shuffle_buffer=int(field("shuffle_buffer")),
      holdout_images=_optional_int(data_config.get("holdout_images"), "data.holdout_images"),
  )


def as_spec(data: DataSpec | Mapping[str, Any]) -> DataSpec:
  """`data` itself if it is already resolved, else `resolve_spec(data)`."""
  return data if isinstance(data, DataSpec) else resolve_spec(data)
