"""Prepares a TFDS dataset for jackpot_jax, once, before training.

  python -m jackpot_jax.data.prepare --data_dir=data_cache/tfds
  python -m jackpot_jax.data.prepare --dataset=imagenet2012 --manual_dir=/data/imagenet

fashion_mnist (the default) is built offline from Debian's dataset-fashion-mnist files
(see `jackpot_jax.data.fashion_mnist`); any other TFDS name goes through TFDS's own
preparation, which downloads unless the dataset reads `--manual_dir` (imagenet2012).
Both skip a dataset that is already prepared. Bad input ends with one line on stderr and
exit status 2, as with the main command line.
"""

from __future__ import annotations

import os
import sys

from absl import app, flags
import tensorflow_datasets as tfds

from jackpot_jax.data.fashion_mnist import DEBIAN_SOURCE_DIR, prepare_fashion_mnist
from jackpot_jax.errors import USER_ERRORS

_DATASET = flags.DEFINE_string("dataset", "fashion_mnist", "TFDS dataset name.")
_DATA_DIR = flags.DEFINE_string(
    "data_dir", None, "TFDS data directory (default: $TFDS_DATA_DIR or ~/tensorflow_datasets).")
_SOURCE_DIR = flags.DEFINE_string(
    "source_dir", DEBIAN_SOURCE_DIR, "fashion_mnist only: directory of the *-ubyte.gz files.")
_MANUAL_DIR = flags.DEFINE_string(
    "manual_dir", None, "Directory of manually downloaded archives (imagenet2012's tars).")


def prepare(dataset: str, data_dir: str | None, source_dir: str = DEBIAN_SOURCE_DIR,
            manual_dir: str | None = None) -> str:
  """Prepares `dataset` in `data_dir` and returns the prepared dataset's directory."""
  if dataset == "fashion_mnist":
    return prepare_fashion_mnist(data_dir, source_dir)
  builder = tfds.builder(dataset, data_dir=data_dir)
  builder.download_and_prepare(download_config=tfds.download.DownloadConfig(
      manual_dir=manual_dir, try_download_gcs=False))
  return os.fspath(builder.data_dir)


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
  data_dir = None if _DATA_DIR.value is None else os.path.expanduser(_DATA_DIR.value)
  try:
    path = prepare(_DATASET.value, data_dir, _SOURCE_DIR.value, _MANUAL_DIR.value)
  except USER_ERRORS as error:
    print(f"jackpot_jax.data.prepare: error: {' '.join(str(error).split())}", file=sys.stderr)
    sys.exit(2)
  print(f"{_DATASET.value} is prepared in {path}")


if __name__ == "__main__":
  app.run(main)
