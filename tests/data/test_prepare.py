"""The offline Fashion-MNIST build and `jackpot_jax.data.prepare`. No test touches the network."""

from __future__ import annotations

import os

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from data_helpers import assert_one_line_error, data_config, write_fashion_mnist_sources
from jackpot_jax.data import (fashion_mnist, load_dataset_info, make_train_iterator,
                              prepare_fashion_mnist)
from jackpot_jax.data import prepare as prepare_lib
from jackpot_jax.data.config import resolve_spec
from jackpot_jax.data.sources import open_data


def test_prepare_fashion_mnist_builds_the_registered_tfds_dataset_offline(tmp_path):
  source_dir, data_dir = tmp_path / "source", tmp_path / "tfds"
  write_fashion_mnist_sources(source_dir)
  path = prepare_fashion_mnist(data_dir, source_dir=source_dir)

  builder = tfds.builder("fashion_mnist", data_dir=data_dir)
  assert builder.is_prepared() and os.fspath(builder.data_dir) == path
  assert builder.info.splits["train"].num_examples == 12
  # TFDS's own reader of the prepared files (array_record: the TensorFlow-free format).
  source = tfds.data_source("fashion_mnist", split="test", data_dir=data_dir, download=False)
  test = {key: np.stack([example[key] for example in source]) for key in ("image", "label")}
  assert test["image"].shape == (6, 28, 28, 1)
  # TFDS shuffles the records; each image's fill value says which it was.
  fill = test["image"][:, 0, 0, 0].astype(int)
  assert sorted(fill) == [10 * i + 5 for i in range(6)]
  np.testing.assert_array_equal(test["label"], (fill - 5) // 10 % 10)


def test_prepare_fashion_mnist_is_idempotent_without_its_sources(tmp_path):
  source_dir, data_dir = tmp_path / "source", tmp_path / "tfds"
  write_fashion_mnist_sources(source_dir)
  first = prepare_fashion_mnist(data_dir, source_dir=source_dir)
  for name in os.listdir(source_dir):
    os.remove(source_dir / name)
  assert prepare_fashion_mnist(data_dir, source_dir=source_dir) == first


def test_a_dataset_prepared_as_tfrecord_gets_array_record_files_with_the_same_examples(tmp_path):
  """Directories prepared by older versions (tfrecord, read only by TensorFlow) are refused
  with the command that converts them; after it, the TensorFlow-free reader sees exactly
  the examples TensorFlow's reader does."""
  source_dir, data_dir = tmp_path / "source", tmp_path / "tfds"
  write_fashion_mnist_sources(source_dir)
  builder = fashion_mnist._LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir,
                                            file_format="tfrecord")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  config = data_config("fashion_mnist", data_dir=str(data_dir))
  assert_one_line_error("prepared as tfrecord.*jackpot_jax.data.prepare", load_dataset_info,
                         config)

  prepare_lib.add_array_record(os.fspath(builder.data_dir))
  opened = open_data(resolve_spec(config))
  for split in ("train", "test"):
    expected = tfds.as_numpy(builder.as_dataset(split=split, batch_size=-1))
    records, rows = opened.rows(split)
    images, labels = zip(*records.read(rows))
    np.testing.assert_array_equal(np.stack(images), expected["image"])
    np.testing.assert_array_equal(labels, expected["label"])
  assert sorted(p for p in os.listdir(builder.data_dir) if "array_record" in p) == [
      "fashion_mnist-test.array_record-00000-of-00001",
      "fashion_mnist-train.array_record-00000-of-00001"]


def test_prepared_fashion_mnist_feeds_the_pipeline(tmp_path):
  write_fashion_mnist_sources(tmp_path / "source")
  prepare_fashion_mnist(tmp_path / "tfds", source_dir=tmp_path / "source")
  config = data_config("fashion_mnist", data_dir=str(tmp_path / "tfds"))

  info = load_dataset_info(config)
  # 12 training images: 10% (1) is held out of the search by default.
  assert (info.num_classes, info.image_shape, info.num_train, info.num_holdout,
          info.num_test) == (10, (28, 28, 1), 11, 1, 6)
  assert info.class_names[0] == "T-shirt/top"
  batch = next(make_train_iterator(config, batch_size=4, seed=0))
  assert batch["image"].shape == (4, 28, 28, 1) and batch["image"].dtype == np.float32
  assert batch["label"].dtype == np.int32


@pytest.mark.skipif(not os.path.isdir(fashion_mnist.DEBIAN_SOURCE_DIR),
                    reason="Debian's dataset-fashion-mnist is not installed")
def test_debian_fashion_mnist_files_read_with_their_standard_statistics():
  images, labels = fashion_mnist.read_fashion_mnist(fashion_mnist.DEBIAN_SOURCE_DIR, "test")
  assert images.shape == (10_000, 28, 28, 1) and images.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(labels), [1000] * 10)
  assert abs(images.mean() / 255 - fashion_mnist.MEAN[0]) < 0.01


def test_missing_fashion_mnist_sources_is_a_one_line_error(tmp_path):
  assert_one_line_error("Fashion-MNIST source file .* is missing", prepare_fashion_mnist,
                         tmp_path / "tfds", source_dir=tmp_path / "nowhere")


def test_unprepared_tfds_dataset_names_the_prepare_command(tmp_path):
  config = data_config("cifar10", data_dir=str(tmp_path))
  assert_one_line_error("not prepared .* jackpot_jax.data.prepare --dataset=cifar10",
                         load_dataset_info, config)
