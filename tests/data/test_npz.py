"""npz datasets. No test touches the network."""

from __future__ import annotations

import numpy as np

from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from data_helpers import data_config, npz_dataset, take
from jackpot_jax.data import load_dataset_info, make_train_iterator


def test_npz_dataset_info(tmp_path):
  info = load_dataset_info({"name": f"npz:{npz_dataset(tmp_path)}"})
  assert (info.num_classes, info.image_shape, info.num_train, info.num_holdout,
          info.num_test) == (5, (8, 8, 3), 36, 4, 13)
  assert info.class_names == ("0", "1", "2", "3", "4")


def test_npz_statistics_default_to_the_training_pixels(tmp_path):
  config = data_config(f"npz:{npz_dataset(tmp_path, train_count=400)}", augment="none",
                   holdout_images=0)
  images = np.concatenate([b["image"] for b in take(make_train_iterator(
      config, batch_size=100, seed=0), 4)])
  np.testing.assert_allclose(images.mean(axis=(0, 1, 2)), 0.0, atol=1e-4)
  np.testing.assert_allclose(images.std(axis=(0, 1, 2)), 1.0, atol=1e-4)
