"""The data config's validated form (`DataSpec`) and a dataset's shape (`DatasetInfo`).

The fields and their defaults are declared in `config_defaults` (data.*). Names: any
TFDS dataset with an image and a label feature ('tfds:<name>' or the bare name, e.g.
'fashion_mnist', 'cifar10', 'imagenet2012'), 'image_folder:<root>' (root/train/<class>/...
plus root/val/ or root/test/) or 'npz:<file>' (uint8 x_train, y_train, x_test, y_test);
for language models 'text:<dir>', 'tokens:<dir>' or 'tfds_text:<name>' (a prepared TFDS
dataset's string feature data.text_feature, one document per example; see `text`).
Preprocessing fields left None (mean/std, augment, channels, image_size) follow the data;
`preprocessing` resolves them once the dataset is open.
"""

from __future__ import annotations

import dataclasses
import os
import re
from typing import Any, Callable, Mapping

import ml_collections

from jackpot_jax import config_defaults, fileio
from jackpot_jax.config_defaults import STANDARD_STATISTICS
from jackpot_jax.data import split_slices, transforms
from jackpot_jax.data.resolved_preprocessing import Preprocessing


# The augmentation the usual recipes of the datasets of STANDARD_STATISTICS train with.
STANDARD_AUGMENTATION = {
    "fashion_mnist": "cifar", "cifar10": "cifar", "cifar100": "cifar",
    "imagenet2012": "imagenet",
}
_TFDS_PREFIX = "tfds:"
# The kinds whose records are token sequences (`text`), and the prefixes naming them.
TEXT_KINDS = ("text", "tokens", "tfds_text")
_TFDS_NAME = r"[a-z][a-z0-9_]*(/[\w.-]+)?(:[\d.*]+)?"


def __getattr__(name: str) -> Any:
  # AUGMENTATIONS was a constant; derived on each read, it includes later registrations.
  if name == "AUGMENTATIONS":
    return transforms.augmentation_names()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What a model and a training loop need to know about a dataset.

  `image_shape` is (H, W, C) of the batches the iterators yield; `num_train` counts the
  training images the search sees, `num_holdout` those held out of it for its
  evaluations (see `holdout`), `num_test` the evaluation split (`data.eval_split`;
  'validation' where a dataset has no 'test'). `preprocessing` is what the images go
  through, with where each choice came from.
  """
  name: str
  num_classes: int
  image_shape: tuple[int, int, int]
  num_train: int
  num_test: int
  class_names: tuple[str, ...]
  num_holdout: int = 0
  preprocessing: Preprocessing | None = None


@dataclasses.dataclass(frozen=True)
class DataSpec:
  """A validated data config: `kind` is 'tfds', 'npz', 'image_folder', 'text', 'tokens'
  or 'tfds_text'; `source` is the TFDS name, npz file or folder root; `workers` is the number
  of Grain worker processes (0: threads of the calling process). mean/std, augment,
  image_size and channels are what the config set; None follows the data (see
  `preprocessing`). seq_len, tokenizer, holdout_sequences and token_cache_dir are the
  text kinds' (`tokenizer` resolved to a folder for them, None for images); text_feature
  the 'tfds_text' kind's."""
  name: str
  kind: str
  source: str
  mean: tuple[float, ...] | None
  std: tuple[float, ...] | None
  image_size: int | None
  augment: str | None
  crop_padding: int
  channels: int | None
  data_dir: str | None
  manual_dir: str | None
  prefetch: int
  workers: int = 0
  cache_limit_mb: int = 4096
  train_split: str = "train"
  eval_split: str = "test"
  holdout_images: int | None = None
  seq_len: int = 128
  tokenizer: str | None = None
  holdout_sequences: int | None = None
  token_cache_dir: str = "auto"
  text_feature: str = "text"


def default_data_config(name: str) -> ml_collections.ConfigDict:
  """A data config for `name` with the declared defaults of `config_defaults`: its
  statistics, augmentation, size and channels follow the data."""
  config = config_defaults.base_config().data
  config.name = name
  return config


def standard_dataset(spec: DataSpec) -> str | None:
  """The dataset of STANDARD_STATISTICS a TFDS spec reads (any version or builder config
  of it), else None: folders and npz files have no standard preprocessing."""
  if spec.kind != "tfds":
    return None
  name = re.split(r"[/:]", spec.source)[0]
  return name if name in STANDARD_STATISTICS else None


def _parse_name(name: str) -> tuple[str, str]:
  """(kind, source) of a data.name; whether a TFDS name exists is checked on loading."""
  for kind in ("image_folder", "npz", *TEXT_KINDS):
    prefix = kind + ":"
    if name.startswith(prefix) and len(name) > len(prefix):
      source = name[len(prefix):]
      if kind == "tfds_text":
        if re.fullmatch(_TFDS_NAME, source):
          return kind, source
        break
      return kind, os.path.expanduser(source)
  tfds_name = name.removeprefix(_TFDS_PREFIX)
  if re.fullmatch(_TFDS_NAME, tfds_name):
    return "tfds", tfds_name
  raise ValueError(f"unknown dataset name {name!r}; use a TFDS name (e.g. fashion_mnist, "
                   "cifar10, imagenet2012, or tfds:<name>), 'image_folder:<root>', "
                   "'npz:<file>', or for language models 'text:<dir>', 'tokens:<dir>' or "
                   "'tfds_text:<TFDS name>'")


def _optional_floats(value: Any) -> tuple[float, ...] | None:
  return None if value is None else tuple(float(v) for v in value)


def _optional_int(value: Any, key: str) -> int | None:
  if value is None:
    return None
  if isinstance(value, bool) or int(value) != value:
    raise ValueError(f"{key} must be a whole number or None, got {value!r}")
  return int(value)


def _count(value: Any, key: str) -> int:
  count = _optional_int(value, key)
  if count is None or count < 0:
    raise ValueError(f"{key} must be a whole number >= 0, got {value!r}")
  return count


def _split_name(value: Any, key: str) -> str:
  split_slices.parse(value, key)
  return value


def _text_fields(data_config: Mapping[str, Any], field: Callable[[str], Any], kind: str,
                 source: str, model_checkpoint: str | None) -> dict[str, Any]:
  """seq_len, tokenizer (data.tokenizer, else the model's checkpoint folder; None for
  image data), holdout_sequences and token_cache_dir, checked; `field` reads a field or
  its default."""
  seq_len = _optional_int(field("seq_len"), "data.seq_len")
  if seq_len < 2:
    raise ValueError(f"data.seq_len must be at least 2 (a sequence of n tokens predicts n - 1 "
                     f"of them), got {seq_len}")
  cache_dir = field("token_cache_dir")
  if not isinstance(cache_dir, str):
    raise ValueError(f"data.token_cache_dir must be a folder path or 'auto', got {cache_dir!r}")
  tokenizer = None
  if kind in TEXT_KINDS:
    tokenizer = data_config.get("tokenizer") or model_checkpoint or None
    if tokenizer is None:
      raise ValueError(f"data.name={kind}:{source} needs a tokenizer: set data.tokenizer to a "
                       "Hugging Face tokenizer folder (with tokenizer.json), or model.checkpoint "
                       "to a model folder that has one")
    for what, path in (("data.name", source), ("data.tokenizer", tokenizer),
                       ("data.token_cache_dir", cache_dir)):
      if fileio.is_cloud(path):
        raise ValueError(f"{what} {path} is in a bucket; text data, tokenizers and token "
                         "stores are read from local disk: copy them there")
    tokenizer = os.path.expanduser(str(tokenizer))
  text_feature = field("text_feature")
  if not isinstance(text_feature, str) or not text_feature:
    raise ValueError(f"data.text_feature must be a feature name, got {text_feature!r}")
  return dict(seq_len=seq_len, tokenizer=tokenizer, text_feature=text_feature,
              holdout_sequences=_optional_int(data_config.get("holdout_sequences"),
                                              "data.holdout_sequences"),
              token_cache_dir=os.path.expanduser(cache_dir))


def resolve_spec(data_config: Mapping[str, Any] | ml_collections.ConfigDict,
                 model_checkpoint: str | None = None) -> DataSpec:
  """Validates a data config. Unset fields get their declared defaults, except the
  preprocessing ones (mean/std, augment, image_size, channels): None follows the data.
  Text data without data.tokenizer reads `model_checkpoint`'s tokenizer (a model folder).

  Raises:
    ValueError: unknown name or augmentation, mean/std of different lengths, a
      channel count other than 1 or 3, or text data without a tokenizer.
  """
  name = data_config.get("name")
  if not isinstance(name, str):
    raise ValueError(f"data.name must be a string, got {name!r}")
  kind, source = _parse_name(name)
  defaults = default_data_config(name)

  def field(key: str) -> Any:
    value = data_config.get(key)
    return defaults[key] if value is None else value

  augment = data_config.get("augment")
  if augment is not None:
    transforms.AUGMENTATION_REGISTRY.check(augment)
  mean = _optional_floats(data_config.get("mean"))
  std = _optional_floats(data_config.get("std"))
  if (mean is None) != (std is None) or (mean is not None and len(mean) != len(std)):
    raise ValueError(f"data.mean {mean} and data.std {std} must both be set, with one value "
                     "per channel, or both be None")
  if std is not None and min(std) <= 0:
    raise ValueError(f"data.std {std} must be positive")
  image_size = _optional_int(data_config.get("image_size"), "data.image_size")
  if image_size is not None and image_size < 1:
    raise ValueError(f"data.image_size must be positive or None (native), got {image_size}")
  channels = data_config.get("channels")
  if channels is not None and channels not in (1, 3):
    raise ValueError(f"data.channels must be 1 or 3 (None: the data's own), got {channels}")
  data_dir = data_config.get("data_dir")
  manual_dir = data_config.get("manual_dir")
  for what, path in (("data.data_dir", data_dir), ("data.manual_dir", manual_dir)):
    if path is not None and fileio.is_cloud(path):
      raise ValueError(f"{what} {path} is in a bucket; TFDS's array_record reader reads local "
                       "files only: copy the dataset to local disk or mount the bucket "
                       "(gcsfuse); image folders and npz files may be gs:// paths")
  if kind not in ("tfds", "tfds_text"):
    fileio.as_path(source, "data.name")  # refuses URLs of schemes other than gs://
  return DataSpec(
      name=name,
      kind=kind,
      source=source,
      mean=mean,
      std=std,
      image_size=image_size,
      augment=augment,
      crop_padding=int(field("crop_padding")),
      channels=channels,
      data_dir=None if data_dir is None else os.path.expanduser(data_dir),
      manual_dir=None if manual_dir is None else os.path.expanduser(manual_dir),
      prefetch=_count(field("prefetch"), "data.prefetch"),
      workers=_count(field("workers"), "data.workers"),
      cache_limit_mb=_count(field("cache_limit_mb"), "data.cache_limit_mb"),
      train_split=_split_name(field("train_split"), "data.train_split"),
      eval_split=_split_name(field("eval_split"), "data.eval_split"),
      holdout_images=_optional_int(data_config.get("holdout_images"), "data.holdout_images"),
      **_text_fields(data_config, field, kind, source, model_checkpoint),
  )


def as_spec(data: DataSpec | Mapping[str, Any]) -> DataSpec:
  """`data` itself if it is already resolved, else `resolve_spec(data)`."""
  return data if isinstance(data, DataSpec) else resolve_spec(data)
