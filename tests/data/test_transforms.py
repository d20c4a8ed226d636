"""Augmentation and evaluation transforms. No test touches the network."""

from __future__ import annotations

import numpy as np
from PIL import Image
import pytest

from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from data_helpers import assert_one_line_error, data_config, write_image_folder
from jackpot_jax.data import load_dataset_info, make_eval_batches
from jackpot_jax.data import transforms


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
  write_image_folder(tmp_path, {"train": {"a": 2, "b": 2}, "test": {"a": 1, "b": 1}})
  (tmp_path / "train" / "b" / "1.png").write_bytes(b"not a png")
  config = data_config(f"image_folder:{tmp_path}", mean=(0.5,) * 3, std=(0.5,) * 3,
                   holdout_images=0)
  broken = r"image .*b.1\.png cannot be decoded \(UnidentifiedImageError\); remove or replace"
  assert_one_line_error(broken, load_dataset_info, config)
  config.image_size = 5
  batches = make_eval_batches(config, "train", batch_size=4)
  with pytest.raises(ValueError, match=broken):
    next(batches)
  batches.close()
