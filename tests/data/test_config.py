"""Bad data configs: one-line errors. No test touches the network."""

from __future__ import annotations

import numpy as np
from PIL import Image

from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from data_helpers import assert_one_line_error, data_config, npz_dataset, write_image_folder
from jackpot_jax.data import load_dataset_info, make_train_iterator


def _write_npz(path, **arrays):
  np.savez(path, **arrays)
  return f"npz:{path}"


def test_bad_inputs_give_one_line_errors(tmp_path):
  def info_of(name, **overrides):
    return lambda: load_dataset_info(data_config(name, **overrides))

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
  write_image_folder(tmp_path / "sizes", {"train": {"cat": 2}, "test": {"cat": 1}})
  Image.new("RGB", (9, 7)).save(tmp_path / "sizes" / "test" / "cat" / "odd.png")
  cases.append((r"images differ in size \(.*0\.png is 6x5, .*odd\.png is 9x7\); set "
                "data.image_size", info_of(f"image_folder:{tmp_path / 'sizes'}")))
  write_image_folder(tmp_path / "mismatch", {"train": {"cat": 1, "dog": 1},
                                              "test": {"cat": 1, "eel": 1}})
  cases.append((r"train and test classes differ \(only in train: \['dog'\], only in test: "
                 r"\['eel'\]\)", info_of(f"image_folder:{tmp_path / 'mismatch'}")))
  for match, call in cases:
    assert_one_line_error(match, call)


def test_batch_that_does_not_split_over_hosts_is_rejected(tmp_path):
  config = data_config(f"npz:{npz_dataset(tmp_path)}")
  assert_one_line_error("multiple of the process count 3", make_train_iterator, config,
                         batch_size=8, seed=0, process_count=3)


def test_mean_with_the_wrong_channel_count_is_rejected(tmp_path):
  config = data_config(f"npz:{npz_dataset(tmp_path)}", mean=(0.5,), std=(0.5,))
  assert_one_line_error("data.mean has 1 values but .* images have 3 channels",
                         make_train_iterator, config, batch_size=8, seed=0)
