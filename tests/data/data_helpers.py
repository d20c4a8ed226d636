"""Tiny datasets written into tmp_path, and assertions the data tests share; `no_network`
is an autouse fixture for every module that imports it."""

from __future__ import annotations

import gzip
import time
import itertools
import os
import socket
import struct

import numpy as np
from PIL import Image
import pytest
import tensorflow_datasets as tfds

from jackpot_jax.data import default_data_config, fashion_mnist

tfds.disable_progress_bar()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Makes Python-level connections fail, so a test that would download fails loudly."""

  def refuse(*args, **kwargs):
    raise RuntimeError("tests must not use the network")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


def write_idx_gz(path, array: np.ndarray) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def write_fashion_mnist_sources(source_dir, train_count=12, test_count=6):
  """Idx files whose image i is filled with the value 10 * i + split offset, label i % 10."""
  os.makedirs(source_dir, exist_ok=True)
  for split, count, offset in (("train", train_count, 0), ("test", test_count, 5)):
    images = np.repeat(10 * np.arange(count) + offset, 28 * 28).reshape(count, 28, 28)
    images_path, labels_path = fashion_mnist.source_paths(source_dir, split)
    write_idx_gz(images_path, images)
    write_idx_gz(labels_path, np.arange(count) % 10)


def npz_dataset(tmp_path, train_count=40, test_count=13, size=8, channels=3, classes=5):
  """An npz dataset whose test image i carries i in its first pixel."""
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (train_count, size, size, channels), dtype=np.uint8)
  x_test = rng.integers(0, 256, (test_count, size, size, channels), dtype=np.uint8)
  x_test[:, 0, 0, 0] = np.arange(test_count)
  path = tmp_path / "tiny.npz"
  np.savez(path, x_train=x_train, y_train=np.arange(train_count) % classes, x_test=x_test,
           y_test=np.arange(test_count) % classes)
  return path


def data_config(name, **overrides):
  config = default_data_config(name)
  config.update(overrides)
  return config


def take(iterator, count):
  return list(itertools.islice(iterator, count))


def assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def assert_one_line_error(match, function, *args, **kwargs):
  with pytest.raises(ValueError, match=match) as error:
    function(*args, **kwargs)
  assert "\n" not in str(error.value)


def write_image_folder(root, split_classes, height=5, width=6):
  """RGB PNGs of random pixels; `split_classes` maps split -> {class: image count}."""
  rng = np.random.default_rng(0)
  for split, classes in split_classes.items():
    for name, count in classes.items():
      os.makedirs(root / split / name, exist_ok=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def worker_that_ends_with_its_parent(parent: int, ready: str) -> None:
  """A spawned process that sets itself up as an input worker does, says so in the file
  `ready`, and waits to be ended."""
  from jackpot_jax.data import pipeline  # pylint: disable=import-outside-toplevel
  pipeline._end_with_the_parent(0, 1, parent=parent)  # pylint: disable=protected-access
  with open(ready, "w", encoding="utf-8"):
    pass
  time.sleep(120)
