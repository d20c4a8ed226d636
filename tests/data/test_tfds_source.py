"""TFDS datasets read by index, of images of any size. No test touches the network."""

from __future__ import annotations

import pickle
import threading
import time

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from data_helpers import assert_batches_equal, assert_one_line_error, data_config, take
from jackpot_jax.data import load_dataset_info, make_eval_batches, make_train_iterator
from jackpot_jax.data.config import resolve_spec
from jackpot_jax.data.sources import open_data


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
  config = data_config("imagenet2012", data_dir=tiny_imagenet_dir, image_size=16)
  info = load_dataset_info(config)
  assert (info.num_classes, info.image_shape, info.num_train, info.num_holdout,
          info.num_test) == (1000, (16, 16, 3), 18, 2, 7)
  from_zero = take(make_train_iterator(config, batch_size=4, seed=1), 7)
  assert from_zero[0]["image"].shape == (4, 16, 16, 3)
  resumed = take(make_train_iterator(config, batch_size=4, seed=1, start_step=5), 2)
  assert_batches_equal(from_zero[5:], resumed)


def test_imagenet_search_never_reads_the_held_out_examples(tiny_imagenet_dir):
  config = data_config("imagenet2012", data_dir=tiny_imagenet_dir, image_size=16)
  held_out = [int(label) for batch in make_eval_batches(config, "holdout", batch_size=4)
              for label in batch["label"][batch["mask"]]]
  searched = {int(label) for batch in take(make_train_iterator(config, batch_size=4, seed=0), 20)
              for label in batch["label"]}
  assert len(held_out) == 2 and not searched & set(held_out)
  assert searched | set(held_out) == set(range(20))


def test_imagenet_eval_batches_cover_every_example_exactly_once(tiny_imagenet_dir):
  config = data_config("imagenet2012", data_dir=tiny_imagenet_dir, image_size=16)
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
  config = data_config("tfds:tiny_shapes", data_dir=str(tmp_path), holdout_images=6,
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
  assert_one_line_error(r"TFDS dataset tiny_shapes has no split 'holdout_v2' \(it has train, "
                         r"validation\); set data.train_split / data.eval_split",
                         load_dataset_info, config)


def test_a_cached_tfds_split_decodes_once_when_two_threads_ask_at_once(tmp_path, monkeypatch):
  """The train and evaluation pipelines may both be first to read a cached split: one
  decodes, the other waits for it. The split still pickles (Grain workers) and reads."""
  from jackpot_jax.data import tfds_source  # pylint: disable=import-outside-toplevel
  TinyShapes(data_dir=tmp_path, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  config = data_config("tfds:tiny_shapes", data_dir=str(tmp_path), holdout_images=6)
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


def test_a_cached_tfds_split_decodes_each_image_once_and_only_those_read(tmp_path, monkeypatch):
  """An `evaluate` that reads a few training images, or the first one's shape, does not
  decode the whole split; what it read is not decoded again, and reads equal uncached
  ones."""
  from jackpot_jax.data import tfds_source  # pylint: disable=import-outside-toplevel
  TinyShapes(data_dir=tmp_path, file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  config = data_config("tfds:tiny_shapes", data_dir=str(tmp_path), holdout_images=6)
  opened = open_data(resolve_spec(config)).dataset.splits["train"]
  split, plain = (tfds_source.TfdsSplit(opened.dataset_dir, opened.split, opened.count,
                                        opened.image_key, opened.label_key, cached=cached)
                  for cached in (True, False))
  decode, calls = tfds_source.TfdsSplit._decode, []
  monkeypatch.setattr(tfds_source.TfdsSplit, "_decode",
                      lambda self, indices: calls.append(list(indices)) or decode(self, indices))
  assert split[4][1] == plain[4][1] and calls == [[4], [4]]
  calls.clear()
  first = split.read(np.array([9, 4, 9, 2]))
  second = split.read(np.arange(30))
  assert calls == [[2, 9], [i for i in range(30) if i not in (2, 4, 9)]]
  for got, want in zip(first + second, plain.read(np.r_[[9, 4, 9, 2], np.arange(30)])):
    np.testing.assert_array_equal(got[0], want[0])
    assert got[1] == want[1]
