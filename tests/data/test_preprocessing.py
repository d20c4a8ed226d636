"""Preprocessing that follows the data: statistics, channels, augmentation. No test touches the network."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import REPO
from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from data_helpers import data_config, npz_dataset, write_image_folder
from jackpot_jax.run import progress, spec as spec_lib
from jackpot_jax.config_defaults import STANDARD_STATISTICS
from jackpot_jax.config_files import load_config
from jackpot_jax.data import load_dataset_info, make_eval_batches, make_train_iterator
from jackpot_jax.data import preprocessing
from jackpot_jax.data.config import resolve_spec
from jackpot_jax.data.records import ArraySplit


def _default_config_on(name: str):
  """The data spec of configs/default.py (Fashion-MNIST's ResNet-20) pointed at `name`."""
  config = load_config(REPO / "configs" / "default.py", {"data.name": name})
  return spec_lib.resolve(config).data


def test_the_default_config_on_an_rgb_folder_takes_channels_statistics_and_augmentation_from_it(
    tmp_path):
  small, large = tmp_path / "small", tmp_path / "large"
  write_image_folder(small, {"train": {"a": 3, "b": 3}, "test": {"a": 1, "b": 1}},
                      height=40, width=40)
  write_image_folder(large, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}},
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
  used = preprocessing.resolve(resolve_spec(data_config("imagenet2012:5.1.0")), (300, 400, 3),
                               never_read)
  assert (used.statistics, used.augment, used.image_size) == (
      "standard:imagenet2012", "imagenet", 224)
  chosen = data_config("fashion_mnist", mean=(0.5,), std=(0.2,), augment="none", image_size=32)
  used = preprocessing.resolve(resolve_spec(chosen), (32, 32, 1), never_read)
  assert (used.mean, used.std, used.statistics, used.augment, used.augment_from,
          used.image_size) == ((0.5,), (0.2,), "config", "none", "config", 32)
  rgb = ArraySplit(np.full((4, 28, 28, 3), 51, np.uint8), np.zeros(4, np.int32))
  used = preprocessing.resolve(resolve_spec(data_config("fashion_mnist", channels=3)),
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
  gray = load_dataset_info(data_config(f"image_folder:{tmp_path / 'gray'}"))
  assert gray.image_shape == (5, 5, 1) and gray.preprocessing.channels_from == "image modes"
  assert load_dataset_info(data_config(f"image_folder:{tmp_path / 'mixed'}")).image_shape == (5, 5, 3)

  (tmp_path / "one").mkdir()
  (tmp_path / "three").mkdir()
  for stored, wanted in ((1, 3), (3, 1)):
    path = npz_dataset(tmp_path / ("one" if stored == 1 else "three"), channels=stored)
    config = data_config(f"npz:{path}", channels=wanted, mean=(0.0,) * wanted,
                     std=(1.0,) * wanted, augment="none", holdout_images=0)
    batch = next(make_eval_batches(config, batch_size=16))
    x_test = np.load(path)["x_test"]
    expected = (np.repeat(x_test, 3, axis=-1) if wanted == 3 else np.stack(
        [np.asarray(Image.fromarray(image).convert("L")) for image in x_test])[..., None])
    np.testing.assert_allclose(batch["image"][:13], expected / 255, atol=1e-6)
    assert load_dataset_info(config).preprocessing.channels_from == "config"
