"""Input pipelines: dataset info, deterministic resumable training batches, padded eval
batches (one Grain pipeline for TFDS datasets, image folders, npz files and, for language
models, packed text sequences), calibration sequences, and the offline Fashion-MNIST
build. See `config` for the data config fields and `text` for text data.

TFDS is imported only by what reads a TFDS dataset or builds Fashion-MNIST (which loads on
first use): a search on an image folder or an npz file does without it."""

from jackpot_jax.data.config import DatasetInfo, DataSpec, default_data_config, resolve_spec
from jackpot_jax.data.pipeline import (host_batch_size, load_dataset_info, make_eval_batches,
                                       make_train_iterator)
from jackpot_jax.data.text import calibration_sequences

__all__ = [
    "DataSpec",
    "DatasetInfo",
    "calibration_sequences",
    "default_data_config",
    "host_batch_size",
    "load_dataset_info",
    "make_eval_batches",
    "make_train_iterator",
    "prepare_fashion_mnist",
    "resolve_spec",
]


def __getattr__(name: str):
  if name == "prepare_fashion_mnist":
    from jackpot_jax.data.fashion_mnist import prepare_fashion_mnist  # pylint: disable=import-outside-toplevel
    return prepare_fashion_mnist
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
