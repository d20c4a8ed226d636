"""Image folders (torchvision's ImageFolder layout). No test touches the network."""

from __future__ import annotations

import numpy as np
from PIL import Image

from conftest import REPO
from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from data_helpers import data_config, write_image_folder
from jackpot_jax.config_files import load_config
from jackpot_jax.data import load_dataset_info, make_eval_batches, make_train_iterator
from jackpot_jax.data import transforms


def test_image_folder_loads_classes_and_shapes(tmp_path):
  write_image_folder(tmp_path, {"train": {"dog": 3, "cat": 2}, "test": {"cat": 1, "dog": 2}})
  config = data_config(f"image_folder:{tmp_path}")
  info = load_dataset_info(config)
  assert info.class_names == ("cat", "dog")
  assert (info.num_classes, info.image_shape, info.num_train, info.num_test) == (
      2, (5, 6, 3), 5, 3)
  batch = next(make_eval_batches(config, batch_size=4))
  np.testing.assert_array_equal(batch["label"][batch["mask"]], [0, 1, 1])


def test_image_folder_grayscale_and_resized(tmp_path):
  write_image_folder(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
  config = data_config(f"image_folder:{tmp_path}", mean=(0.5,), std=(0.5,), image_size=4,
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
  config = data_config(f"image_folder:{tmp_path}", mean=(0.0, 0.0, 0.0), std=(1.0, 1.0, 1.0),
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
  write_image_folder(tmp_path, {"train": {"n01": 3, "n02": 3}, "val": {"n01": 1, "n02": 2}},
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
