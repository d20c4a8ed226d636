"""Split slices in TFDS's notation ('test[:2000]', 'train[10%:]'). No test touches the
network."""

from __future__ import annotations

import numpy as np
import pytest

from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from data_helpers import assert_one_line_error, data_config, npz_dataset
from jackpot_jax.data import load_dataset_info, make_eval_batches, resolve_spec, split_slices


@pytest.mark.parametrize("value, count, expected", [
    ("test", 10, list(range(10))),
    ("test[:3]", 10, [0, 1, 2]),
    ("test[7:]", 10, [7, 8, 9]),
    ("test[-2:]", 10, [8, 9]),
    ("test[2:-5]", 10, [2, 3, 4]),
    ("test[:25%]", 10, [0, 1]),  # 2.5 rounds to 2, as Python and TFDS round halves to even
    ("test[30%:50%]", 10, [3, 4]),
    ("validation[-10%:]", 20, [18, 19]),
])
def test_a_slice_selects_the_rows_tfds_would(value, count, expected):
  assert split_slices.parse(value, "data.eval_split").rows(count).tolist() == expected


def test_the_slice_keeps_the_split_name_and_writes_itself_back():
  sliced = split_slices.parse("train[10%:2000]", "data.train_split")
  assert sliced.name == "train" and sliced.suffix() == "[10%:2000]"
  assert split_slices.parse("test", "data.eval_split").suffix() == ""


@pytest.mark.parametrize("value", ["test[:", "test[a:b]", "test[1:2:3]", "test[:150%]",
                                   "[:5]", "test]", "test[:5]x"])
def test_a_bad_slice_is_refused_in_one_line_naming_the_field(value):
  assert_one_line_error(r"data.eval_split=.*(not a split slice|percentage)", split_slices.parse,
                        value, "data.eval_split")


def test_a_slice_that_selects_nothing_is_refused(tmp_path):
  config = data_config(f"npz:{npz_dataset(tmp_path)}", eval_split="test[13:]")
  assert_one_line_error(r"data.eval_split='test\[13:\]' selects no record of the split's 13",
                        load_dataset_info, config)


def test_a_bad_slice_fails_when_the_config_is_resolved(tmp_path):
  assert_one_line_error(r"data.train_split='train\[:x\]' is not a split slice",
                        resolve_spec, data_config(f"npz:{npz_dataset(tmp_path)}",
                                                  train_split="train[:x]"))


def test_a_sliced_eval_split_measures_exactly_those_test_images(tmp_path):
  config = data_config(f"npz:{npz_dataset(tmp_path)}", eval_split="test[3:8]", augment="none")
  assert load_dataset_info(config).num_test == 5
  batches = list(make_eval_batches(config, config.eval_split, batch_size=4))
  first_pixels = np.concatenate([b["image"][b["mask"]][:, 0, 0, 0] for b in batches])
  whole = np.concatenate([b["image"][b["mask"]][:, 0, 0, 0]
                          for b in make_eval_batches(config, "test", batch_size=4)])
  np.testing.assert_array_equal(first_pixels, whole[3:8])


def test_a_sliced_train_split_searches_and_holds_out_only_its_records(tmp_path):
  whole = data_config(f"npz:{npz_dataset(tmp_path)}", augment="none", holdout_images=4)
  sliced = data_config(f"npz:{npz_dataset(tmp_path)}", augment="none", holdout_images=4,
                       train_split="train[:50%]")
  info = load_dataset_info(sliced)
  assert (info.num_train, info.num_holdout) == (16, 4)  # 20 of the 40, 4 of them held out

  def images(config, split):
    return np.concatenate([b["image"][b["mask"]]
                           for b in make_eval_batches(config, split, batch_size=8)])

  train = images(whole, "train")
  np.testing.assert_array_equal(images(sliced, "train"), train[:20])
  held_out = images(sliced, "holdout")
  assert all(any(np.array_equal(image, row) for row in train[:20]) for image in held_out)
