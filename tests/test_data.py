"""Tests of jackpot_jax.data on tiny datasets made in tmp_path; no test touches the network."""

from __future__ import annotations

import gzip
import itertools
import json
import os
import pickle
import socket
import struct
import subprocess
import sys
import threading
import time

import numpy as np
from PIL import Image
import psutil
import pytest
import tensorflow_datasets as tfds

from conftest import REPO
from jackpot_jax.run import progress, spec as spec_lib
from jackpot_jax.config_defaults import STANDARD_STATISTICS
from jackpot_jax.config_files import load_config
from jackpot_jax.data import (default_data_config, fashion_mnist, load_dataset_info,
                              make_eval_batches, make_train_iterator, prepare_fashion_mnist)
from jackpot_jax.data import holdout, preprocessing, prepare as prepare_lib, transforms
from jackpot_jax.data.config import resolve_spec
from jackpot_jax.data.records import ArraySplit
from jackpot_jax.data.sources import open_data

tfds.disable_progress_bar()


@pytest.fixture(autouse=True)
def no_network(monkeypatch):
  """Makes Python-level connections fail, so a test that would download fails loudly."""

  def refuse(*args, **kwargs):
    raise RuntimeError("tests must not use the network")

  monkeypatch.setattr(socket.socket, "connect", refuse)
  monkeypatch.setattr(socket, "create_connection", refuse)


def _write_idx_gz(path, array: np.ndarray) -> None:
  header = bytes([0, 0, 0x08, array.ndim]) + struct.pack(f">{array.ndim}I", *array.shape)
  with gzip.open(path, "wb") as f:
    f.write(header + array.astype(np.uint8).tobytes())


def _write_fashion_mnist_sources(source_dir, train_count=12, test_count=6):
  """Idx files whose image i is filled with the value 10 * i + split offset, label i % 10."""
  os.makedirs(source_dir, exist_ok=True)
  for split, count, offset in (("train", train_count, 0), ("test", test_count, 5)):
    images = np.repeat(10 * np.arange(count) + offset, 28 * 28).reshape(count, 28, 28)
    images_path, labels_path = fashion_mnist.source_paths(source_dir, split)
    _write_idx_gz(images_path, images)
    _write_idx_gz(labels_path, np.arange(count) % 10)


def _npz_dataset(tmp_path, train_count=40, test_count=13, size=8, channels=3, classes=5):
  """An npz dataset whose test image i carries i in its first pixel."""
  rng = np.random.default_rng(0)
  x_train = rng.integers(0, 256, (train_count, size, size, channels), dtype=np.uint8)
  x_test = rng.integers(0, 256, (test_count, size, size, channels), dtype=np.uint8)
  x_test[:, 0, 0, 0] = np.arange(test_count)
  path = tmp_path / "tiny.npz"
  np.savez(path, x_train=x_train, y_train=np.arange(train_count) % classes, x_test=x_test,
           y_test=np.arange(test_count) % classes)
  return path


def _config(name, **overrides):
  config = default_data_config(name)
  config.update(overrides)
  return config


def _take(iterator, count):
  return list(itertools.islice(iterator, count))


def _assert_batches_equal(first, second):
  assert len(first) == len(second)
  for a, b in zip(first, second):
    assert a.keys() == b.keys()
    for key in a:
      np.testing.assert_array_equal(a[key], b[key])


def _assert_one_line_error(match, function, *args, **kwargs):
  with pytest.raises(ValueError, match=match) as error:
    function(*args, **kwargs)
  assert "\n" not in str(error.value)


# Offline Fashion-MNIST.


def test_prepare_fashion_mnist_builds_the_registered_tfds_dataset_offline(tmp_path):
  source_dir, data_dir = tmp_path / "source", tmp_path / "tfds"
  _write_fashion_mnist_sources(source_dir)
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
  _write_fashion_mnist_sources(source_dir)
  first = prepare_fashion_mnist(data_dir, source_dir=source_dir)
  for name in os.listdir(source_dir):
    os.remove(source_dir / name)
  assert prepare_fashion_mnist(data_dir, source_dir=source_dir) == first


def test_a_dataset_prepared_as_tfrecord_gets_array_record_files_with_the_same_examples(tmp_path):
  """Directories prepared by older versions (tfrecord, read only by TensorFlow) are refused
  with the command that converts them; after it, the TensorFlow-free reader sees exactly
  the examples TensorFlow's reader does."""
  source_dir, data_dir = tmp_path / "source", tmp_path / "tfds"
  _write_fashion_mnist_sources(source_dir)
  builder = fashion_mnist._LocalFashionMNIST(source_dir=source_dir, data_dir=data_dir,
                                            file_format="tfrecord")
  builder.download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  config = _config("fashion_mnist", data_dir=str(data_dir))
  _assert_one_line_error("prepared as tfrecord.*jackpot_jax.data.prepare", load_dataset_info,
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
  _write_fashion_mnist_sources(tmp_path / "source")
  prepare_fashion_mnist(tmp_path / "tfds", source_dir=tmp_path / "source")
  config = _config("fashion_mnist", data_dir=str(tmp_path / "tfds"))

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
  _assert_one_line_error("Fashion-MNIST source file .* is missing", prepare_fashion_mnist,
                         tmp_path / "tfds", source_dir=tmp_path / "nowhere")


def test_unprepared_tfds_dataset_names_the_prepare_command(tmp_path):
  config = _config("cifar10", data_dir=str(tmp_path))
  _assert_one_line_error("not prepared .* jackpot_jax.data.prepare --dataset=cifar10",
                         load_dataset_info, config)


# Determinism, resume and sharding.


@pytest.mark.parametrize("augmentation", ["cifar", "imagenet", "none"])
def test_batch_at_a_step_does_not_depend_on_the_start_step(tmp_path, augmentation):
  config = _config(f"npz:{_npz_dataset(tmp_path)}", augment=augmentation)
  from_zero = _take(make_train_iterator(config, batch_size=8, seed=3), 12)
  # 40 examples make 5 steps per epoch: step 7 resumes inside the second epoch.
  resumed = _take(make_train_iterator(config, batch_size=8, seed=3, start_step=7), 5)
  _assert_batches_equal(from_zero[7:], resumed)
  _assert_batches_equal(from_zero, _take(make_train_iterator(config, batch_size=8, seed=3), 12))


def test_seed_changes_order_and_augmentation(tmp_path):
  config = _config(f"npz:{_npz_dataset(tmp_path)}", augment="cifar")
  first = next(make_train_iterator(config, batch_size=8, seed=0))
  second = next(make_train_iterator(config, batch_size=8, seed=1))
  assert not np.array_equal(first["image"], second["image"])


def _recovered(batches):
  images = np.concatenate([b["image"][b.get("mask", slice(None))] for b in batches])
  return sorted(map(bytes, np.rint(images * 255).astype(np.uint8)))


def test_each_epoch_visits_every_searched_example_once_and_no_held_out_one(tmp_path):
  path = _npz_dataset(tmp_path)
  config = _config(f"npz:{path}", augment="none", mean=(0.0,) * 3, std=(1.0,) * 3,
                   holdout_images=8)
  searched = _recovered(_take(make_train_iterator(config, batch_size=8, seed=0), 4))
  held_out = _recovered(make_eval_batches(config, "holdout", batch_size=3))
  x_train = np.load(path)["x_train"]
  assert len(searched) == 32 and len(held_out) == 8
  assert sorted(searched + held_out) == sorted(map(bytes, x_train))
  # The held-out slice does not move with the search seed.
  assert _recovered(_take(make_train_iterator(config, batch_size=8, seed=7), 4)) == searched


def test_default_holdout_is_5000_images_or_a_tenth_of_smaller_sets():
  assert holdout.holdout_count(None, 1_281_167) == 5000
  assert holdout.holdout_count(None, 40) == 4
  assert holdout.holdout_count(0, 40) == 0
  searched, held_out = holdout.partition(40, 4)
  assert len(held_out) == 4 and sorted(np.concatenate([searched, held_out])) == list(range(40))


@pytest.mark.parametrize("augmentation", ["cifar", "imagenet"])
def test_hosts_partition_the_global_batch(tmp_path, augmentation):
  config = _config(f"npz:{_npz_dataset(tmp_path)}", augment=augmentation)
  single = _take(make_train_iterator(config, batch_size=8, seed=5, start_step=2), 3)
  hosts = [_take(make_train_iterator(config, batch_size=8, seed=5, start_step=2,
                                     process_index=index, process_count=4), 3)
           for index in range(4)]
  for step, whole in enumerate(single):
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([host[step][key] for host in hosts]),
                                    whole[key])


def test_a_late_resume_reads_only_the_records_of_its_own_steps(tmp_path, monkeypatch):
  """Resuming at step s starts the dataset at s: nothing before it is read or replayed."""
  config = _config(f"npz:{_npz_dataset(tmp_path)}", augment="cifar", prefetch=0)
  load_dataset_info(config)  # opens the dataset once, its statistics read from every image
  reads = []
  original = ArraySplit.read
  monkeypatch.setattr(ArraySplit, "read",
                      lambda self, indices: reads.append(len(indices)) or original(self, indices))
  late = next(make_train_iterator(config, batch_size=8, seed=3, start_step=10**9))
  assert reads == [8] and late["image"].shape == (8, 8, 8, 3)


def test_worker_processes_yield_the_batches_of_the_in_process_pipeline(tmp_path):
  config = _config(f"npz:{_npz_dataset(tmp_path)}", augment="cifar")
  in_process = _take(make_train_iterator(config, batch_size=8, seed=2, start_step=3), 4)
  config.workers = 2
  batches = make_train_iterator(config, batch_size=8, seed=2, start_step=3)
  try:
    _assert_batches_equal(in_process, _take(batches, 4))
  finally:
    batches.close()


_HOLD_A_PIPELINE = """
import itertools, json, sys, time
import psutil
from jackpot_jax.data import default_data_config, make_train_iterator

if __name__ == "__main__":
  config = default_data_config("npz:" + sys.argv[1])
  config.workers = 2
  batches = make_train_iterator(config, batch_size=8, seed=0)
  next(batches)
  workers = [p.pid for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]
  print(json.dumps(workers), flush=True)
  time.sleep(600)
"""


def test_a_killed_search_leaves_no_input_worker_behind(tmp_path):
  script = tmp_path / "hold.py"
  script.write_text(_HOLD_A_PIPELINE)
  holder = subprocess.Popen([sys.executable, str(script), str(_npz_dataset(tmp_path))],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    workers = json.loads(holder.stdout.readline())
  finally:
    holder.kill()
    holder.wait()
  assert len(workers) == 2
  # A worker still starting when its parent died ends once started: allow a loaded machine.
  deadline = time.monotonic() + 120
  while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.1)
  alive = [pid for pid in workers if psutil.pid_exists(pid)
           and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
  assert alive == []


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_example_exactly_once(tmp_path, process_count):
  config = _config(f"npz:{_npz_dataset(tmp_path)}", mean=(0.0,) * 3, std=(1.0,) * 3)
  seen, counts = [], []
  for index in range(process_count):
    batches = list(make_eval_batches(config, "test", batch_size=4, process_index=index,
                                     process_count=process_count))
    counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (4 // process_count, 8, 8, 3)
      assert not batch["image"][~batch["mask"]].any()
      first_pixel = np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int)
      seen.extend(first_pixel[batch["mask"]])
  assert counts == [4] * process_count  # ceil(13 / 4) global batches, on every host
  assert sorted(seen) == list(range(13))


def test_eval_batches_are_the_unaugmented_normalised_images(tmp_path):
  path = _npz_dataset(tmp_path)
  config = _config(f"npz:{path}", augment="cifar", mean=(0.5, 0.5, 0.5), std=(0.25,) * 3)
  batch = next(make_eval_batches(config, batch_size=16))
  x_test = np.load(path)["x_test"]
  np.testing.assert_allclose(batch["image"][:13], (x_test / 255 - 0.5) / 0.25, atol=1e-5)
  assert batch["mask"].sum() == 13


# TFDS datasets read by index, of images of any size.


class _TinyImagenet(tfds.builder_cls("imagenet2012"), skip_registration=True):
  """imagenet2012's builder writing a few random JPEGs instead of reading the tars;
  validation example i has label i, so coverage can be checked."""

  name = "imagenet2012"

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(20, seed=0),
            "validation": self._generate_examples(7, seed=1)}

  def _generate_examples(self, count, seed):
    rng = np.random.default_rng(seed)
    for i in range(count):
      shape = (int(rng.integers(12, 30)), int(rng.integers(12, 30)), 3)
      yield i, {"image": rng.integers(0, 256, shape, dtype=np.uint8), "label": i,
                "file_name": f"{seed}_{i}.JPEG"}


@pytest.fixture(scope="module")
def tiny_imagenet_dir(tmp_path_factory):
  data_dir = tmp_path_factory.mktemp("tfds")
  _TinyImagenet(data_dir=data_dir, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return str(data_dir)


def test_imagenet_info_and_resume(tiny_imagenet_dir):
  config = _config("imagenet2012", data_dir=tiny_imagenet_dir, image_size=16)
  info = load_dataset_info(config)
  assert (info.num_classes, info.image_shape, info.num_train, info.num_holdout,
          info.num_test) == (1000, (16, 16, 3), 18, 2, 7)
  from_zero = _take(make_train_iterator(config, batch_size=4, seed=1), 7)
  assert from_zero[0]["image"].shape == (4, 16, 16, 3)
  resumed = _take(make_train_iterator(config, batch_size=4, seed=1, start_step=5), 2)
  _assert_batches_equal(from_zero[5:], resumed)


def test_imagenet_search_never_reads_the_held_out_examples(tiny_imagenet_dir):
  config = _config("imagenet2012", data_dir=tiny_imagenet_dir, image_size=16)
  held_out = [int(label) for batch in make_eval_batches(config, "holdout", batch_size=4)
              for label in batch["label"][batch["mask"]]]
  searched = {int(label) for batch in _take(make_train_iterator(config, batch_size=4, seed=0), 20)
              for label in batch["label"]}
  assert len(held_out) == 2 and not searched & set(held_out)
  assert searched | set(held_out) == set(range(20))


def test_imagenet_eval_batches_cover_every_example_exactly_once(tiny_imagenet_dir):
  config = _config("imagenet2012", data_dir=tiny_imagenet_dir, image_size=16)
  seen, counts = [], []
  for index in range(2):
    batches = list(make_eval_batches(config, batch_size=4, process_index=index,
                                     process_count=2))
    counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (2, 16, 16, 3)
      seen.extend(batch["label"][batch["mask"]])
  assert counts == [2, 2]
  assert sorted(seen) == list(range(7))


class TinyShapes(tfds.core.GeneratorBasedBuilder):
  """A TFDS dataset of none of the usual names: its image and label features are called
  'picture' and 'category', it has a 'validation' split and no 'test'; example i has
  label i % 3."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, features=tfds.features.FeaturesDict({
        "picture": tfds.features.Image(shape=(6, 6, 3)),
        "category": tfds.features.ClassLabel(names=["circle", "square", "star"]),
        "id": tfds.features.Text()}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(30), "validation": self._generate_examples(9)}

  def _generate_examples(self, count):
    rng = np.random.default_rng(count)
    for i in range(count):
      yield i, {"picture": rng.integers(0, 256, (6, 6, 3), dtype=np.uint8),
                "category": i % 3, "id": str(i)}


@pytest.mark.parametrize("cache_limit_mb", [0, 4096])
def test_any_tfds_dataset_with_an_image_and_a_label_feature(tmp_path, cache_limit_mb):
  TinyShapes(data_dir=tmp_path, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  config = _config("tfds:tiny_shapes", data_dir=str(tmp_path), holdout_images=6,
                   cache_limit_mb=cache_limit_mb)
  info = load_dataset_info(config)
  assert info.class_names == ("circle", "square", "star")
  assert (info.image_shape, info.num_train, info.num_holdout, info.num_test) == (
      (6, 6, 3), 24, 6, 9)
  evaluation = list(make_eval_batches(config, batch_size=4))
  labels = np.concatenate([batch["label"][batch["mask"]] for batch in evaluation])
  np.testing.assert_array_equal(np.bincount(labels), [3, 3, 3])
  batch = next(make_train_iterator(config, batch_size=8, seed=0))
  assert batch["image"].shape == (8, 6, 6, 3)
  config.eval_split = "train"
  assert load_dataset_info(config).num_test == 30
  config.train_split = "validation"
  assert load_dataset_info(config).num_train == 9 - 6
  config.eval_split = "holdout_v2"
  _assert_one_line_error(r"TFDS dataset tiny_shapes has no split 'holdout_v2' \(it has train, "
                         r"validation\); set data.train_split / data.eval_split",
                         load_dataset_info, config)



def test_a_cached_tfds_split_decodes_once_when_two_threads_ask_at_once(tmp_path, monkeypatch):
  """The train and evaluation pipelines may both be first to read a cached split: one
  decodes, the other waits for it. The split still pickles (Grain workers) and reads."""
  from jackpot_jax.data import tfds_source  # pylint: disable=import-outside-toplevel
  TinyShapes(data_dir=tmp_path, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  config = _config("tfds:tiny_shapes", data_dir=str(tmp_path), holdout_images=6)
  opened = open_data(resolve_spec(config)).dataset.splits["train"]  # decoded by now
  split = tfds_source.TfdsSplit(opened.dataset_dir, opened.split, opened.count,
                                opened.image_key, opened.label_key, cached=True)
  decode, calls = tfds_source.TfdsSplit._decode, []

  def slow_decode(self, indices):
    calls.append(len(indices))
    time.sleep(0.3)
    return decode(self, indices)

  monkeypatch.setattr(tfds_source.TfdsSplit, "_decode", slow_decode)
  barrier, results = threading.Barrier(2), []

  def first_read():
    barrier.wait()
    results.append(split.read(np.arange(30)))

  threads = [threading.Thread(target=first_read) for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert calls == [30]
  np.testing.assert_array_equal(results[0][7][0], results[1][7][0])
  copy = pickle.loads(pickle.dumps(split))
  np.testing.assert_array_equal(copy.read(np.array([7]))[0][0], results[0][7][0])
  assert calls == [30]

# Sources.


def test_npz_dataset_info(tmp_path):
  info = load_dataset_info({"name": f"npz:{_npz_dataset(tmp_path)}"})
  assert (info.num_classes, info.image_shape, info.num_train, info.num_holdout,
          info.num_test) == (5, (8, 8, 3), 36, 4, 13)
  assert info.class_names == ("0", "1", "2", "3", "4")


def test_npz_statistics_default_to_the_training_pixels(tmp_path):
  config = _config(f"npz:{_npz_dataset(tmp_path, train_count=400)}", augment="none",
                   holdout_images=0)
  images = np.concatenate([b["image"] for b in _take(make_train_iterator(
      config, batch_size=100, seed=0), 4)])
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=1e-4)


def _write_image_folder(root, split_classes, height=5, width=6):
  """RGB PNGs of random pixels; `split_classes` maps split -> {class: image count}."""
  rng = np.random.default_rng(0)
  for split, classes in split_classes.items():
    for name, count in classes.items():
      os.makedirs(root / split / name, exist_ok=True)
      for i in range(count):
        pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
        Image.fromarray(pixels).save(root / split / name / f"{i}.png")


def test_image_folder_loads_classes_and_shapes(tmp_path):
  _write_image_folder(tmp_path, {"train": {"dog": 3, "cat": 2}, "test": {"cat": 1, "dog": 2}})
  config = _config(f"image_folder:{tmp_path}")
  info = load_dataset_info(config)
  assert info.class_names == ("cat", "dog")
  assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (
      2, (5, 6, 3), 5, 3)
  batch = next(make_eval_batches(config, batch_size=4))
  np.testing.assert_array_equal(batch["label"][batch["mask"]], [0, 1, 1])


def test_image_folder_grayscale_and_resized(tmp_path):
  _write_image_folder(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
  config = _config(f"image_folder:{tmp_path}", mean=(0.5,), std=(0.5,), image_size=4,
                   channels=1)
  assert load_dataset_info(config).image_shape == (4, 4, 1)
  assert next(make_train_iterator(config, batch_size=2, seed=0))["image"].shape == (2, 4, 4, 1)


def test_image_folder_reads_torchvisions_layout_val_split_nested_folders_any_extension_case(
    tmp_path):
  """train/ + val/ as ImageNet ships; each class's images in torchvision's ImageFolder order
  (its own files before its sub-folders', names sorted); files that are not images skipped."""
  files = {"train/b/1.PNG": 10, "train/b/sub/0.png": 20, "train/b/sub/deeper/a.jpeg": 30,
           "train/a/z.Jpg": 40, "train/a/y.webp": 50, "train/a/x.BMP": 60,
           "val/a/0.png": 70, "val/b/n/0.png": 80}
  for name, value in files.items():
    (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
    image = Image.fromarray(np.full((3, 3, 3), value, np.uint8))
    image.save(tmp_path / name, format="JPEG" if "jp" in name.lower() else None, quality=100)
  (tmp_path / "train" / "a" / "notes.txt").write_text("not an image")
  config = _config(f"image_folder:{tmp_path}", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
                   augment="none", holdout_images=0)
  info = load_dataset_info(config)
  assert info.class_names == ("a", "b")
  assert (info.num_train, info.num_test) == (6, 2)
  train = next(make_eval_batches(config, "train", batch_size=6))
  np.testing.assert_array_equal(train["label"], [0, 0, 0, 1, 1, 1])
  pixel_values = np.round(train["image"][:, 1, 1, 0] * 255)
  np.testing.assert_allclose(pixel_values, [60, 50, 40, 10, 20, 30], atol=2)
  evaluation = next(make_eval_batches(config, batch_size=2))
  np.testing.assert_array_equal(evaluation["label"], [0, 1])


def test_the_paper_resnet50_configs_read_an_imagenet_layout_folder(tmp_path):
  """train/ + val/ as ImageNet ships: the 'validation' eval split reads val/, training
  crops of images over 64 px are torchvision's random-resized 224 crops, evaluation its
  resize-256 centre crop, normalised with the folder's own statistics."""
  _write_image_folder(tmp_path, {"train": {"n01": 3, "n02": 3}, "val": {"n01": 1, "n02": 2}},
                      height=60, width=80)
  config = load_config(REPO / "configs" / "paper" / "resnet50_imagenet_s90_e30.py")
  config.data.name = f"image_folder:{tmp_path}"
  config.data.workers, config.data.holdout_images = 0, 0
  info = load_dataset_info(config.data)
  assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (
      2, (224, 224, 3), 6, 3)
  assert (info.preprocessing.augment, info.preprocessing.augment_from,
          info.preprocessing.statistics) == (
              "imagenet", "image size 80 px > 64", "estimated from 6 training images")
  batch = next(make_train_iterator(config.data, batch_size=2, seed=0))
  assert batch["image"].shape == (2, 224, 224, 3)
  evaluation = next(make_eval_batches(config.data, config.data.eval_split, batch_size=4))
  np.testing.assert_array_equal(evaluation["label"][evaluation["mask"]], [0, 1, 1])
  source = np.asarray(Image.open(tmp_path / "val" / "n01" / "0.png"))
  mean, std = info.preprocessing.mean, info.preprocessing.std
  expected = transforms.normalise(transforms.resize_centre_crop(source, 224), mean, std)
  np.testing.assert_allclose(evaluation["image"][0], expected, atol=1e-6)


# Preprocessing that follows the data.


def _default_config_on(name: str):
  """The data spec of configs/default.py (Fashion-MNIST's ResNet-20) pointed at `name`."""
  config = load_config(REPO / "configs" / "default.py", {"data.name": name})
  return spec_lib.resolve(config).data


def test_the_default_config_on_an_rgb_folder_takes_channels_statistics_and_augmentation_from_it(
    tmp_path):
  small, large = tmp_path / "small", tmp_path / "large"
  _write_image_folder(small, {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}},
                      height=40, width=40)
  _write_image_folder(large, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}},
                      height=72, width=72)

  info = load_dataset_info(_default_config_on(f"image_folder:{small}"))
  used = info.preprocessing
  assert info.image_shape == (40, 40, 3)
  assert (used.channels, used.channels_from) == (3, "image modes")
  assert used.statistics == "estimated from 6 training images"
  pixels = np.stack([np.asarray(Image.open(path))
                     for path in (small / "train").rglob("*.png")]) / 255
  np.testing.assert_allclose(used.mean, pixels.mean(axis=(0, 1, 2)), atol=1e-9)
  np.testing.assert_allclose(used.std, pixels.std(axis=(0, 1, 2)), atol=1e-9)
  assert (used.augment, used.augment_from, used.image_size) == (
      "cifar", "image size 40 px <= 64", None)
  header = progress.data_header(info)
  assert header.startswith(f"data image_folder:{small}: 40x40x3 images; channels 3 (image "
                           "modes); mean (")
  assert header.endswith("(estimated from 6 training images); augment cifar (image size "
                         "40 px <= 64)")
  assert next(make_train_iterator(_default_config_on(f"image_folder:{small}"), batch_size=2,
                                  seed=0))["image"].shape == (2, 40, 40, 3)

  info = load_dataset_info(_default_config_on(f"image_folder:{large}"))
  used = info.preprocessing
  assert info.image_shape == (224, 224, 3)
  assert (used.augment, used.augment_from, used.image_size) == (
      "imagenet", "image size 72 px > 64", 224)


def test_a_known_dataset_gets_its_standard_preprocessing_and_set_values_win():
  """Resolved without reading an image: standards come from the name, set values from the
  config; only a standard for other channels (data.channels converting) is estimated."""
  never_read = ArraySplit(np.zeros((0, 28, 28, 1), np.uint8), np.zeros(0, np.int32))
  used = preprocessing.resolve(_default_config_on("fashion_mnist"), (28, 28, 1), never_read)
  assert (used.mean, used.std) == STANDARD_STATISTICS["fashion_mnist"]
  assert (used.statistics, used.augment, used.augment_from, used.channels_from) == (
      "standard:fashion_mnist", "cifar", "standard:fashion_mnist", "TFDS image feature")
  used = preprocessing.resolve(resolve_spec(_config("imagenet2012:5.1.0")), (300, 400, 3),
                               never_read)
  assert (used.statistics, used.augment, used.image_size) == (
      "standard:imagenet2012", "imagenet", 224)
  chosen = _config("fashion_mnist", mean=(0.5,), std=(0.2,), augment="none", image_size=32)
  used = preprocessing.resolve(resolve_spec(chosen), (32, 32, 1), never_read)
  assert (used.mean, used.std, used.statistics, used.augment, used.augment_from,
          used.image_size) == ((0.5,), (0.2,), "config", "none", "config", 32)
  rgb = ArraySplit(np.full((4, 28, 28, 3), 51, np.uint8), np.zeros(4, np.int32))
  used = preprocessing.resolve(resolve_spec(_config("fashion_mnist", channels=3)),
                               (28, 28, 3), rgb)
  assert (used.channels, used.channels_from) == (3, "config")
  assert used.statistics == "estimated from 4 training images"
  np.testing.assert_allclose(used.mean, (0.2,) * 3)


def test_channels_follow_the_images_unless_data_channels_converts_them(tmp_path):
  for folder, colour in (("gray", False), ("mixed", True)):
    for split in ("train", "test"):
      (tmp_path / folder / split / "a").mkdir(parents=True)
      for index in range(3):
        Image.fromarray(np.full((5, 5), 40 * index, np.uint8)).save(
            tmp_path / folder / split / "a" / f"{index}.png")
    if colour:  # one colour image among grayscale ones: the folder is a colour one
      Image.new("RGB", (5, 5), (200, 10, 10)).save(tmp_path / folder / "train" / "a" / "c.png")
  gray = load_dataset_info(_config(f"image_folder:{tmp_path / 'gray'}"))
  assert gray.image_shape == (5, 5, 1) and gray.preprocessing.channels_from == "image modes"
  assert load_dataset_info(_config(f"image_folder:{tmp_path / 'mixed'}")).image_shape == (5, 5, 3)

  (tmp_path / "one").mkdir()
  (tmp_path / "three").mkdir()
  for stored, wanted in ((1, 3), (3, 1)):
    path = _npz_dataset(tmp_path / ("one" if stored == 1 else "three"), channels=stored)
    config = _config(f"npz:{path}", channels=wanted, mean=(0.0,) * wanted,
                     std=(1.0,) * wanted, augment="none", holdout_images=0)
    batch = next(make_eval_batches(config, batch_size=16))
    x_test = np.load(path)["x_test"]
    expected = (np.repeat(x_test, 3, axis=-1) if wanted == 3 else np.stack(
        [np.asarray(Image.fromarray(image).convert("L")) for image in x_test])[..., None])
    np.testing.assert_allclose(batch["image"][:13], expected / 255, atol=1e-6)
    assert load_dataset_info(config).preprocessing.channels_from == "config"


# Augmentation details.


def test_resize_to_the_same_size_is_the_identity_and_flips_mirror():
  image = np.random.default_rng(0).integers(0, 256, (7, 5, 2), dtype=np.uint8)
  np.testing.assert_array_equal(transforms.resize(image, 7, 5), image)
  np.testing.assert_array_equal(transforms.pad_crop_flip(image, 0, 0, True, 0), image[:, ::-1])


def test_pad_crop_flip_shifts_in_zeros():
  image = np.full((4, 4, 1), 200, np.uint8)
  np.testing.assert_array_equal(transforms.pad_crop_flip(image, 2, 2, False, 2), image)
  cropped = transforms.pad_crop_flip(image, 0, 4, False, 2)
  assert (cropped[:2] == 0).all() and (cropped[:, 2:] == 0).all()
  assert (cropped[2:, :2] == 200).all()


def test_resized_crop_boxes_stay_inside_the_image_with_torchvisions_ranges():
  rng = np.random.default_rng(0)
  boxes = np.array([transforms.resized_crop_box(rng, 20, 30) for _ in range(500)])
  top, left, height, width = boxes.T
  assert (top >= 0).all() and (left >= 0).all()
  assert (top + height <= 20).all() and (left + width <= 30).all()
  area = height * width / 600
  assert area.min() >= 0.05 and area.max() <= 1.0
  ratio = width / height
  assert ratio.min() >= 0.6 and ratio.max() <= 1.6
  # A sliver of an image never fits a candidate: the fallback is its clamped centre.
  assert transforms.resized_crop_box(rng, 100, 2) == (48, 0, 3, 2)


def test_imagenet_eval_is_torchvisions_resize_256_and_centre_crop_224():
  image = np.random.default_rng(0).integers(0, 256, (300, 400, 3), dtype=np.uint8)
  resized = np.asarray(Image.fromarray(image).resize((341, 256), Image.Resampling.BILINEAR))
  expected = resized[16:240, 58:282]
  np.testing.assert_array_equal(transforms.resize_centre_crop(image, 224), expected)


def test_a_broken_image_is_named_when_the_folder_opens_or_when_its_batch_is_read(tmp_path):
  """Without data.image_size every header is read when the folder opens; with it, the
  file fails the batch that reads it."""
  _write_image_folder(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
  (tmp_path / "train" / "b" / "1.png").write_bytes(b"not a png")
  config = _config(f"image_folder:{tmp_path}", mean=(0.5,) * 3, std=(0.5,) * 3,
                   holdout_images=0)
  broken = r"image .*b.1\.png cannot be decoded \(UnidentifiedImageError\); remove or replace"
  _assert_one_line_error(broken, load_dataset_info, config)
  config.image_size = 5
  batches = make_eval_batches(config, "train", batch_size=4)
  with pytest.raises(ValueError, match=broken):
    next(batches)
  batches.close()


# Bad input.


def _write_npz(path, **arrays):
  np.savez(path, **arrays)
  return f"npz:{path}"


def test_bad_inputs_give_one_line_errors(tmp_path):
  def info_of(name, **overrides):
    return lambda: load_dataset_info(_config(name, **overrides))

  image = np.zeros((4, 8, 8, 3), np.uint8)
  labels = np.zeros(4, np.int64)
  cases = [
      ("unknown dataset name 'MNIST v9'", info_of("MNIST v9")),
      (r"unknown dataset name 'mnist_v9' \(did you mean 'mnist'\?\): TFDS has no such.*"
       "jackpot_jax.data.prepare",
       info_of("mnist_v9")),
      ("npz file .* does not exist", info_of(f"npz:{tmp_path / 'absent.npz'}")),
      ("lacks y_train, x_test, y_test",
       info_of(_write_npz(tmp_path / "partial.npz", x_train=image))),
      ("train images must be uint8",
       info_of(_write_npz(tmp_path / "floats.npz", x_train=image.astype(np.float32),
                          y_train=labels, x_test=image, y_test=labels))),
      ("test labels must be integers of shape",
       info_of(_write_npz(tmp_path / "short.npz", x_train=image, y_train=labels,
                          x_test=image, y_test=labels[:3]))),
      ("unknown data.augment 'autoaugment'",
       info_of(f"npz:{tmp_path / 'floats.npz'}", augment="autoaugment")),
  ]
  (tmp_path / "empty" / "train" / "cat").mkdir(parents=True)
  (tmp_path / "empty" / "test" / "cat").mkdir(parents=True)
  cases.append(("has no images in class subdirectories",
                info_of(f"image_folder:{tmp_path / 'empty'}")))
  (tmp_path / "no_eval" / "train" / "cat").mkdir(parents=True)
  cases.append(("has neither a val/ nor a test/ directory",
                info_of(f"image_folder:{tmp_path / 'no_eval'}")))
  _write_image_folder(tmp_path / "sizes", {"train": {"cat": 2}, "test": {"cat": 1}})
  Image.new("RGB", (9, 7)).save(tmp_path / "sizes" / "test" / "cat" / "odd.png")
  cases.append((r"images differ in size \(.*0\.png is 6x5, .*odd\.png is 9x7\); set "
                "data.image_size", info_of(f"image_folder:{tmp_path / 'sizes'}")))
  _write_image_folder(tmp_path / "mismatch", {"train": {"cat": 1, "dog": 1},
                                              "test": {"cat": 1, "eel": 1}})
  cases.append((r"train and test classes differ \(only in train: \['dog'\], only in test: "
                 r"\['eel'\]\)", info_of(f"image_folder:{tmp_path / 'mismatch'}")))
  for match, call in cases:
    _assert_one_line_error(match, call)


def test_batch_that_does_not_split_over_hosts_is_rejected(tmp_path):
  config = _config(f"npz:{_npz_dataset(tmp_path)}")
  _assert_one_line_error("multiple of the process count 3", make_train_iterator, config,
                         batch_size=8, seed=0, process_count=3)


def test_mean_with_the_wrong_channel_count_is_rejected(tmp_path):
  config = _config(f"npz:{_npz_dataset(tmp_path)}", mean=(0.5,), std=(0.5,))
  _assert_one_line_error("data.mean has 1 values but .* images have 3 channels",
                         make_train_iterator, config, batch_size=8, seed=0)
