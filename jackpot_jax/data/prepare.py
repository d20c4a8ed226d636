"""Prepares a TFDS dataset for jackpot_jax, once, before training.

  python -m jackpot_jax.data.prepare --data_dir=data_cache/tfds
  python -m jackpot_jax.data.prepare --dataset=imagenet2012 --manual_dir=/data/imagenet

fashion_mnist (the default) is built offline from Debian's dataset-fashion-mnist files
(see `jackpot_jax.data.fashion_mnist`); any other TFDS name goes through TFDS's own
preparation, which downloads unless the dataset reads `--manual_dir` (imagenet2012).
Both skip a dataset that is already prepared, and both leave array_record files (the
format the search reads by index, without TensorFlow), converting a dataset prepared
earlier as tfrecord. Bad input ends with one line on stderr and exit status 2, as with
the main command line.
"""

from __future__ import annotations

import os

from absl import flags
import tensorflow_datasets as tfds

from jackpot_jax import entrypoint
from jackpot_jax.data.fashion_mnist import DEBIAN_SOURCE_DIR, prepare_fashion_mnist
from jackpot_jax.data.tfds_source import FILE_FORMAT

_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", "TFDS dataset name.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_SOURCE_DIR = flags.DEFINE_string(
    "source_dir", DEBIAN_SOURCE_DIR, "fashion_mnist only: directory of the *-ubyte.gz files.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Directory of manually downloaded archives (imagenet2012's tars).")


def prepare(dataset: str, data_dir: str | None, source_dir: str = DEBIAN_SOURCE_DIR,
            manual_dir: str | None = None) -> str:
  """Prepares `dataset` in `data_dir` and returns the prepared dataset's directory.

  The result holds array_record files, which the search reads without TensorFlow; a
  dataset prepared earlier in another format gets them added beside its own files.
  """
  if dataset == "fashion_mnist":
    path = prepare_fashion_mnist(data_dir, source_dir)
  else:
    builder = tfds.builder(dataset, data_dir=data_dir)
    if not builder.is_prepared():
      builder = tfds.builder(dataset, data_dir=data_dir, file_format=FILE_FORMAT)
      builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
          manual_dir=manual_dir, try_download_gcs=False))
    path = os.fspath(builder.data_dir)
  add_array_record(path)
  return path


def add_array_record(dataset_version_dir: str) -> None:
  """Adds array_record copies of a prepared dataset version's shards, unless it has them.

  Each shard is rewritten record for record (the serialized examples are the same in
  every TFDS file format), and dataset_info.json lists the new format as an alternative.
  TFDS's own converter would do the same but needs Apache Beam installed.
  """
  from tensorflow_datasets.core import dataset_info as dataset_info_lib  # pylint: disable=import-outside-toplevel
  from tensorflow_datasets.core import file_adapters  # pylint: disable=import-outside-toplevel
  info = tfds.builder_from_directory(dataset_version_dir).info
  present = [f.value for f in (info.file_format, *info.alternative_file_formats)]
  if FILE_FORMAT in present:
    return
  reader = file_adapters.ADAPTER_FOR_FORMAT[info.file_format]
  writer = file_adapters.ADAPTER_FOR_FORMAT[file_adapters.FileFormat(FILE_FORMAT)]
  for split in info.splits.values():
    for path in split.filepaths:
      target = path.parent / path.name.replace(f".{present[0]}-", f".{FILE_FORMAT}-")
      records = reader.make_tf_data(path).as_numpy_iterator()
      writer.write_examples(target, ((None, record) for record in records))
  proto = info.as_proto
  proto.alternative_file_formats.append(FILE_FORMAT)
  dataset_info_lib.write_dataset_info_proto(proto, dataset_info_dir=dataset_version_dir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  data_dir = None if _DATA_DIR.value is None else os.path.expanduser(_DATA_DIR.value)
  path = prepare(_DATASET.value, data_dir, _SOURCE_DIR.value, _MANUAL_DIR.value)
  print(f"{_DATASET.value} is prepared in {path}")


if __name__ == "__main__":
  entrypoint.run(main)
