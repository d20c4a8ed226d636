"""Input pipelines: dataset info, deterministic resumable training batches, padded eval
batches (one Grain pipeline for TFDS datasets, image folders and npz files), and the
offline Fashion-MNIST build. See `config` for the data config fields."""

from jackpot_jax.data.config import DatasetInfo, DataSpec, default_data_config, resolve_spec
from jackpot_jax.data.fashion_mnist import prepare_fashion_mnist
from jackpot_jax.data.pipeline import (host_batch_size, load_dataset_info, make_eval_batches,
                                       make_train_iterator)

__all__ = [
    "DataSpec",
    "DatasetInfo",
    "default_data_config",
    "host_batch_size",
    "load_dataset_info",
    "make_eval_batches",
    "make_train_iterator",
    "prepare_fashion_mnist",
    "resolve_spec",
]
