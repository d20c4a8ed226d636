"""Per-example image transforms, one implementation for every source: the CIFAR recipe
(zero-pad and random crop, flip), the ImageNet recipe (random-resized crop and flip for
training; resize and centre crop for evaluation, with torchvision's arithmetic), the
normalisation every batch gets, and the grayscale/RGB conversion data.channels asks for.

Each function takes uint8 (H, W, C) images; random transforms take their parameters, or
a generator seeded by the example's place in the global batch, so an example's
augmentation never depends on the host that computes it.
Resizing goes through PIL's bilinear filter, which antialiases when it shrinks (as
torchvision's PIL path does).
"""

from __future__ import annotations

import math

import numpy as np
from PIL import Image

from jackpot_jax.data.preprocessing import Preprocessing

# Random-resized-crop ranges of the standard ImageNet recipe (Szegedy et al. 2015).
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_RESIZED_CROP_ATTEMPTS = 10
# Evaluation of the ImageNet recipe: resize the shorter side to 256, centre-crop 224.
EVAL_CROP_FRACTION = 224.0 / 256.0


def normalise(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  """Pixels in [0, 255] -> float32 (x / 255 - mean) / std, per channel."""
  scale = 1.0 / (255.0 * np.asarray(std, np.float32))
  offset = np.asarray(mean, np.float32) / np.asarray(std, np.float32)
  return images.astype(np.float32) * scale - offset


def _to_pil(image: np.ndarray) -> Image.Image:
  return Image.fromarray(image[..., 0] if image.shape[-1] == 1 else image)


def _from_pil(image: Image.Image, channels: int) -> np.ndarray:
  return np.asarray(image, np.uint8).reshape(image.height, image.width, channels)


def to_channels(image: np.ndarray, channels: int) -> np.ndarray:
  """`image` with 1 or 3 channels: grayscale repeated to RGB, RGB to PIL's luma (the
  conversion image folders decode with)."""
  if image.shape[-1] == channels:
    return image
  if channels == 3:
    return np.repeat(image, 3, axis=-1)
  return _from_pil(_to_pil(image).convert("L"), 1)


def resize(image: np.ndarray, height: int, width: int,
           box: tuple[int, int, int, int] | None = None) -> np.ndarray:
  """Bilinear resize of `image` (or of its crop `box` = (left, top, right, bottom))."""
  if box is None and image.shape[:2] == (height, width):
    return image
  resized = _to_pil(image).resize((width, height), Image.Resampling.BILINEAR, box=box)
  return _from_pil(resized, image.shape[-1])


def fit(image: np.ndarray, size: int | None, shape: tuple[int, int, int]) -> np.ndarray:
  """`image` resized to size x size, or checked to have the dataset's `shape` when None.

  Raises:
    ValueError (one line): images differ in size and no size is set.
  """
  if size is not None:
    return resize(image, size, size)
  if image.shape != shape:
    raise ValueError(f"images differ in size ({shape} and {image.shape}); set "
                     "data.image_size to resize them")
  return image


def pad_crop_flip(image: np.ndarray, top: int, left: int, flip: bool,
                  padding: int) -> np.ndarray:
  """Zero-pads by `padding`, crops back to the input size at (top, left) of the padded
  image, mirrors where `flip`. The zeros are black raw pixels (as torchvision's
  RandomCrop pads)."""
  height, width, channels = image.shape
  padded = np.zeros((height + 2 * padding, width + 2 * padding, channels), image.dtype)
  padded[padding:padding + height, padding:padding + width] = image
  crop = padded[top:top + height, left:left + width]
  return crop[:, ::-1] if flip else crop


def resized_crop_box(rng: np.random.Generator, height: int,
                     width: int) -> tuple[int, int, int, int]:
  """torchvision's RandomResizedCrop box (top, left, box_height, box_width).

  Up to ten candidates cover a uniform fraction in RESIZED_CROP_SCALE of the image with a
  log-uniform aspect ratio in RESIZED_CROP_RATIO; the first that fits is used, else a
  centre crop of the whole image with its aspect ratio clamped to the range.
  """
  area = height * width
  log_ratio = (math.log(RESIZED_CROP_RATIO[0]), math.log(RESIZED_CROP_RATIO[1]))
  for _ in range(_RESIZED_CROP_ATTEMPTS):
    target_area = area * rng.uniform(*RESIZED_CROP_SCALE)
    aspect = math.exp(rng.uniform(*log_ratio))
    box_w = int(round(math.sqrt(target_area * aspect)))
    box_h = int(round(math.sqrt(target_area / aspect)))
    if 0 < box_w <= width and 0 < box_h <= height:
      top = int(rng.integers(0, height - box_h + 1))
      left = int(rng.integers(0, width - box_w + 1))
      return top, left, box_h, box_w
  ratio = width / height
  if ratio < RESIZED_CROP_RATIO[0]:
    box_w, box_h = width, int(round(width / RESIZED_CROP_RATIO[0]))
  elif ratio > RESIZED_CROP_RATIO[1]:
    box_h, box_w = height, int(round(height * RESIZED_CROP_RATIO[1]))
  else:
    box_h, box_w = height, width
  return (height - box_h) // 2, (width - box_w) // 2, box_h, box_w


def resized_crop_flip(image: np.ndarray, rng: np.random.Generator, size: int) -> np.ndarray:
  """The ImageNet training transform: a random-resized crop to size x size, flipped half
  the time."""
  top, left, box_h, box_w = resized_crop_box(rng, *image.shape[:2])
  crop = resize(image, size, size, box=(left, top, left + box_w, top + box_h))
  return crop[:, ::-1] if rng.random() < 0.5 else crop


def resize_centre_crop(image: np.ndarray, size: int) -> np.ndarray:
  """The ImageNet evaluation transform: the shorter side resized to size / 0.875 (256 for
  224), then the central size x size (torchvision's Resize + CenterCrop arithmetic)."""
  height, width, _ = image.shape
  side = int(round(size / EVAL_CROP_FRACTION))
  if height <= width:
    new_h, new_w = side, int(side * width / height)
  else:
    new_h, new_w = int(side * height / width), side
  resized = resize(image, new_h, new_w)
  top, left = int(round((new_h - size) / 2.0)), int(round((new_w - size) / 2.0))
  return resized[top:top + size, left:left + size]


def train_images(images: list[np.ndarray], preprocessing: Preprocessing,
                 shape: tuple[int, int, int], seed: tuple[int, ...], global_size: int,
                 rows: slice) -> np.ndarray:
  """One host's rows of a global training batch under `preprocessing.augment`, as float32
  on the [0, 255] scale.

  Every random draw depends on `seed` and the row's place in the global batch, never on
  which host transforms it: CIFAR parameters are drawn for all `global_size` rows and
  sliced; each ImageNet row has a generator seeded by (*seed, row).

  Args:
    images: the uint8 images of rows[0], rows[0] + 1, ... of the global batch.
    shape: the dataset's (H, W, C) when `preprocessing.image_size` is None (checked, not
      resized to).
    seed: integers naming the global batch (run seed, step).
  """
  if preprocessing.augment == "imagenet":
    out = [resized_crop_flip(image, np.random.default_rng([*seed, row]),
                             preprocessing.image_size)
           for row, image in zip(range(rows.start, rows.stop), images)]
  elif preprocessing.augment == "cifar":
    rng = np.random.default_rng(seed)
    offsets = rng.integers(0, 2 * preprocessing.crop_padding + 1, size=(global_size, 2))[rows]
    flips = (rng.random(global_size) < 0.5)[rows]
    out = [pad_crop_flip(fit(image, preprocessing.image_size, shape), top, left, flip,
                         preprocessing.crop_padding)
           for image, (top, left), flip in zip(images, offsets, flips)]
  else:
    out = [fit(image, preprocessing.image_size, shape) for image in images]
  return np.stack(out).astype(np.float32)


def eval_image(image: np.ndarray, preprocessing: Preprocessing,
               shape: tuple[int, int, int]) -> np.ndarray:
  """One evaluation example: the ImageNet recipe's resize and centre crop, else the image
  at the model's size."""
  if preprocessing.augment == "imagenet":
    return resize_centre_crop(image, preprocessing.image_size)
  return fit(image, preprocessing.image_size, shape)
