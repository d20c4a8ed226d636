"""Prepared TFDS datasets, opened as random-access splits of (image, label) records, or
(`open_tfds_text`) as the documents of a string feature for the `tfds_text:` kind.

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
import dataclasses
import logging
import os
from pathlib import Path
import threading
from typing import Any, Iterator

import numpy as np
import tensorflow_datasets as tfds

from jackpot_jax import errors
from jackpot_jax.data.config import DataSpec
from jackpot_jax.data.records import ArraySplit, SourceDataset



class _WithoutOpenCVNotice(logging.Filter):
  """Drops TFDS's "OpenCV is not installed" notice, logged on the first decoded image of
  every run: PIL decodes the same pixels, and the notice reads like a fault."""

  def filter(self, record: logging.LogRecord) -> bool:
    return "OpenCV is not installed" not in str(record.msg)


logging.getLogger("absl").addFilter(_WithoutOpenCVNotice())

# The file format the TensorFlow-free reader needs.
FILE_FORMAT = "array_record"
# Records decoded per task when a split is cached: large enough to amortise the task,
# small enough to spread a 10,000-record split over every core.
_DECODE_CHUNK = 1024


def prepare_command(spec: DataSpec, data_dir: str) -> str:
  """The command that prepares (or converts) `spec`'s dataset for reading here."""
  command = f"python -m jackpot_jax.data.prepare --dataset={spec.source} --data_dir={data_dir}"
  if spec.source.startswith("imagenet2012"):
    command += " --manual_dir=<dir with ILSVRC2012_img_{train,val}.tar>"
  return command


def prepared_builder(spec: DataSpec) -> tfds.core.DatasetBuilder:
  """The TFDS builder of `spec`, which must already be prepared in `spec.data_dir`.

  Raises:
    ValueError (one line): TFDS knows no such dataset, or it is not prepared, with the
      command that prepares it.
  """
  try:
    builder = tfds.builder(spec.source, data_dir=spec.data_dir)
  except tfds.core.registered.DatasetNotFoundError as error:
    closest = errors.did_you_mean(spec.source.split(":")[0],
                                  tfds.list_builders(with_community_datasets=False))
    others = ("'text:<dir>' or 'tokens:<dir>'" if spec.kind == "tfds_text"
              else "'image_folder:<root>' or 'npz:<file>'")
    raise ValueError(f"unknown dataset name {spec.source!r}{closest}: TFDS has no such "
                     "dataset; give a TFDS name (prepared once with `python -m "
                     f"jackpot_jax.data.prepare --dataset=<name>`), {others}") from error
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


def _feature_key(features: Any, wanted: str, kind: type, source: str) -> str:
  """`wanted` if the dataset has it, else its only feature of `kind`.

  Raises:
    ValueError (one line): no such feature, or several to choose from.
  """
  if wanted in features:
    return wanted
  keys = [key for key, feature in features.items() if isinstance(feature, kind)]
  if len(keys) != 1:
    raise ValueError(f"TFDS dataset {source} has {len(keys) or 'no'} {kind.__name__} "
                     f"features ({', '.join(features)}); jackpot_jax needs one image and one "
                     "class label feature")
  return keys[0]


class TfdsSplit:
  """One split of a prepared dataset, read by index from its array_record files.

  The reader opens on first access, in the process that reads (a Grain worker receives
  the directory and split, not an open file). A `cached` split keeps every image it
  decoded: small datasets (CIFAR, Fashion-MNIST) then cost their decoding once, not once
  per epoch and evaluation, also when the train and evaluation pipelines' threads ask for
  the same images at the same time. Each image is decoded when a read first asks for it,
  so a command that reads a few (an `evaluate` re-estimating BN statistics on 2,048
  training images, the first image's shape) does not decode the whole split.
  """

  def __init__(self, dataset_dir: str, split: str, count: int, image_key: str,
               label_key: str, cached: bool):
    self.dataset_dir, self.split, self.count = dataset_dir, split, count
    self.image_key, self.label_key, self.cached = image_key, label_key, cached
    self._source, self._arrays, self._decoded = None, None, None
    self._open_lock, self._decode_lock = threading.Lock(), threading.Lock()

  def __getstate__(self) -> dict:
    state = {**self.__dict__, "_source": None}
    del state["_open_lock"], state["_decode_lock"]
    return state

  def __setstate__(self, state: dict) -> None:
    self.__dict__.update(state)
    self._open_lock, self._decode_lock = threading.Lock(), threading.Lock()

  def __len__(self) -> int:
    return self.count

  def _record(self, example: dict) -> tuple[np.ndarray, int]:
    image = np.asarray(example[self.image_key], np.uint8)
    return (image[..., None] if image.ndim == 2 else image), int(example[self.label_key])

  def _decode(self, indices: list[int]) -> list[tuple[np.ndarray, int]]:
    # One batched read: array_record reads a list of keys ~50x faster per record than
    # one key at a time.
    with self._open_lock:
      if self._source is None:
        builder = tfds.builder_from_directory(self.dataset_dir)
        self._source = builder.as_data_source(split=self.split, file_format=FILE_FORMAT)
    return [self._record(example) for example in self._source.__getitems__(indices)]

  def _cached_read(self, indices: np.ndarray) -> list[tuple[np.ndarray, int]]:
    """The records at `indices` from the kept arrays, those never read before decoded
    first (on a pool of threads where there are many: PIL releases the GIL), once."""
    indices = np.asarray(indices, np.int64)
    if not len(indices):
      return []
    with self._decode_lock:
      missing = (np.unique(indices) if self._decoded is None
                 else np.unique(indices[~self._decoded[indices]]))
      chunks = [missing[start:start + _DECODE_CHUNK].tolist()
                for start in range(0, len(missing), _DECODE_CHUNK)]
      if len(chunks) > 1:
        with futures.ThreadPoolExecutor(max_workers=os.cpu_count() or 1) as pool:
          decoded = list(pool.map(self._decode, chunks))
      else:
        decoded = [self._decode(chunk) for chunk in chunks]
      for chunk, records in zip(chunks, decoded):
        if self._arrays is None:
          image = records[0][0]
          self._arrays = ArraySplit(np.zeros((self.count, *image.shape), image.dtype),
                                    np.zeros(self.count, np.int32))
          self._decoded = np.zeros(self.count, bool)
        self._arrays.images[chunk] = np.stack([image for image, _ in records])
        self._arrays.labels[chunk] = [label for _, label in records]
        self._decoded[chunk] = True
      return self._arrays.read(indices)

  def read(self, indices: np.ndarray) -> list[tuple[np.ndarray, int]]:
    if self.cached:
      return self._cached_read(indices)
    return self._decode([int(i) for i in indices])

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    return self.read([index])[0]


def open_tfds(spec: DataSpec) -> SourceDataset:
  """Every split of the prepared TFDS dataset of `spec`, without reading an example.

  Splits of fixed-size images whose decoded pixels fit in data.cache_limit_mb are
  cached in memory once read; all others are decoded on every read.

  Raises:
    ValueError (one line): see `array_record_builder`, or the dataset lacks an image or
      a class-label feature.
  """
  builder = array_record_builder(spec)
  features = builder.info.features
  image_key = _feature_key(features, "image", tfds.features.Image, spec.source)
  label_key = _feature_key(features, "label", tfds.features.ClassLabel, spec.source)
  dataset_dir = os.fspath(builder.data_dir)
  image_shape = features[image_key].shape
  fixed = None not in image_shape
  splits = {}
  for name, info in builder.info.splits.items():
    decoded_mb = info.num_examples * int(np.prod(image_shape)) / 2**20 if fixed else None
    cached = decoded_mb is not None and decoded_mb <= spec.cache_limit_mb
    splits[name] = TfdsSplit(dataset_dir, name, info.num_examples, image_key, label_key,
                             cached)
  return SourceDataset(f"TFDS dataset {spec.source}", splits,
                       tuple(features[label_key].names))


def _check_string_feature(features: Any, wanted: str, source: str) -> None:
  """Raises ValueError (one line) unless `wanted` is a scalar string feature."""
  if wanted not in features:
    raise ValueError(f"TFDS dataset {source} has no feature {wanted!r} (it has "
                     f"{', '.join(sorted(features))}); set data.text_feature to the string feature "
                     "that holds a document")
  feature = features[wanted]
  if not (isinstance(feature, tfds.features.Tensor) and tuple(feature.shape) == ()
          and np.dtype(feature.np_dtype).kind in "OSU"):
    raise ValueError(f"TFDS dataset {source}'s feature {wanted!r} is a "
                     f"{type(feature).__name__}, not a string; set data.text_feature to a "
                     "string feature (tfds.features.Text) that holds one document per example")


@dataclasses.dataclass(frozen=True)
class TextSplit:
  """A split of a prepared TFDS dataset whose string feature `feature` holds one document
  per example; `files` are its array_record shards, which key its token store."""

  source: str
  dataset_dir: str
  split: str
  feature: str
  count: int
  files: tuple[Path, ...]

  def key_files(self) -> list[tuple[str, Path]]:
    """(name, path) of the shards as `token_store` keys them: by feature and shard."""
    return [(f"tfds:{self.feature}:{path.name}", path) for path in self.files]

  def documents(self) -> Iterator[str]:
    """The examples' documents in the order of the prepared files, read in chunks."""
    source = tfds.builder_from_directory(self.dataset_dir).as_data_source(
        split=self.split, file_format=FILE_FORMAT)
    for start in range(0, self.count, _DECODE_CHUNK):
      indices = list(range(start, min(start + _DECODE_CHUNK, self.count)))
      for index, example in zip(indices, source.__getitems__(indices)):
        value = example[self.feature]
        if isinstance(value, str):
          yield value
          continue
        try:
          yield bytes(value).decode("utf-8")
        except UnicodeDecodeError as error:
          raise ValueError(f"TFDS dataset {self.source}, {self.split} example {index}: "
                           f"{self.feature!r} is not UTF-8 text ({error.reason} at byte "
                           f"{error.start})") from error


def open_tfds_text(spec: DataSpec) -> dict[str, TextSplit]:
  """Split name -> `TextSplit` of the prepared TFDS dataset of `spec` (data.text_feature),
  without reading an example; like the image splits, read from array_record files
  without TensorFlow.

  Raises:
    ValueError (one line): see `array_record_builder`, or the dataset has no such
      feature (naming those it has), or it is not a string.
  """
  builder = array_record_builder(spec)
  _check_string_feature(builder.info.features, spec.text_feature, spec.source)
  dataset_dir = os.fspath(builder.data_dir)
  splits = {}
  for name, info in builder.info.splits.items():
    template = info.filename_template.replace(filetype_suffix=FILE_FORMAT)
    files = tuple(Path(os.fspath(path)) for path in template.sharded_filepaths(info.num_shards))
    splits[name] = TextSplit(spec.source, dataset_dir, name, spec.text_feature,
                             info.num_examples, files)
  return splits
