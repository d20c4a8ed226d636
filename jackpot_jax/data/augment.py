"""Vectorised numpy image transforms for in-memory datasets: crops, flips, resizes, and
the normalisation every batch gets.

Random transforms take their parameters as arrays drawn beforehand, so a caller can draw
them for a whole global batch from one RNG and apply only its own host's slice.
"""

from __future__ import annotations

import numpy as np

# Random-resized-crop ranges of the standard ImageNet recipe (Szegedy et al. 2015).
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
# Eval crop of the ImageNet recipe: resize to 256, centre-crop 224.
EVAL_CROP_FRACTION = 224.0 / 256.0
_RESIZED_CROP_ATTEMPTS = 10


def normalise(images: np.ndarray, mean: tuple[float, ...], std: tuple[float, ...]) -> np.ndarray:
  """Pixels in [0, 255] -> float32 (x / 255 - mean) / std, per channel."""
  scale = 1.0 / (255.0 * np.asarray(std, np.float32))
  offset = np.asarray(mean, np.float32) / np.asarray(std, np.float32)
  return images.astype(np.float32) * scale - offset


def sample_pad_crop_flip(rng: np.random.Generator, count: int,
                         padding: int) -> tuple[np.ndarray, np.ndarray]:
  """Draws (top, left) crop offsets in [0, 2 * padding] and flip flags for `count` images."""
  offsets = rng.integers(0, 2 * padding + 1, size=(count, 2))
  flips = rng.random(count) < 0.5
  return offsets, flips


def pad_crop_flip(images: np.ndarray, offsets: np.ndarray, flips: np.ndarray,
                  padding: int) -> np.ndarray:
  """Zero-pads by `padding`, crops back to the input size at `offsets`, flips where asked.

  The zeros are added to the raw pixels (black, as torchvision's RandomCrop pads), so
  they become -mean/std after normalisation.
  """
  count, height, width, _ = images.shape
  padded = np.pad(images, ((0, 0), (padding, padding), (padding, padding), (0, 0)))
  rows = offsets[:, :1] + np.arange(height)
  cols = offsets[:, 1:] + np.arange(width)
  cols = np.where(flips[:, None], cols[:, ::-1], cols)
  batch = np.arange(count)[:, None, None]
  return padded[batch, rows[:, :, None], cols[:, None, :]]


def sample_resized_crop_boxes(rng: np.random.Generator, count: int, height: int,
                              width: int) -> np.ndarray:
  """Draws random-resized-crop boxes (top, left, box_height, box_width), in pixels.

  Each box covers a uniform fraction in RESIZED_CROP_SCALE of the image with a
  log-uniform aspect ratio in RESIZED_CROP_RATIO; like torchvision, ten candidates are
  drawn per image and the first that fits is used, else the whole image (with its aspect
  ratio clamped to the range) is taken.
  """
  area = height * width * rng.uniform(*RESIZED_CROP_SCALE, size=(count, _RESIZED_CROP_ATTEMPTS))
  log_ratio = rng.uniform(*np.log(RESIZED_CROP_RATIO), size=(count, _RESIZED_CROP_ATTEMPTS))
  box_w = np.sqrt(area * np.exp(log_ratio))
  box_h = np.sqrt(area / np.exp(log_ratio))
  fits = (box_w <= width) & (box_h <= height)
  first_fit = np.argmax(fits, axis=1)
  rows = np.arange(count)
  box_h, box_w = box_h[rows, first_fit], box_w[rows, first_fit]
  fallback_ratio = np.clip(width / height, *RESIZED_CROP_RATIO)
  fallback_h = min(height, width / fallback_ratio)
  fallback_w = min(width, height * fallback_ratio)
  none_fit = ~fits.any(axis=1)
  box_h = np.where(none_fit, fallback_h, box_h)
  box_w = np.where(none_fit, fallback_w, box_w)
  top = rng.uniform(size=count) * (height - box_h)
  left = rng.uniform(size=count) * (width - box_w)
  return np.stack([top, left, box_h, box_w], axis=1)


def center_crop_boxes(count: int, height: int, width: int, fraction: float) -> np.ndarray:
  """Boxes of the central `fraction` of each side, in the layout of the random boxes."""
  box_h, box_w = height * fraction, width * fraction
  box = [(height - box_h) / 2, (width - box_w) / 2, box_h, box_w]
  return np.tile(np.asarray(box, np.float64), (count, 1))


def crop_and_resize(images: np.ndarray, boxes: np.ndarray, size: tuple[int, int],
                    flips: np.ndarray | None = None) -> np.ndarray:
  """Bilinearly resamples box `boxes[i]` of image i to `size`, mirrored where `flips`.

  Output pixel centres map to box coordinates with the half-pixel convention (as
  tf.image.resize and PIL do). There is no antialiasing, so large downscales alias;
  image folders are therefore resized with PIL when they are loaded.

  Returns:
    float32 (N, size[0], size[1], C), on the scale of `images`.
  """
  count, height, width, _ = images.shape
  out_h, out_w = size
  top, left, box_h, box_w = boxes.T
  ys = top[:, None] + (np.arange(out_h) + 0.5) * (box_h / out_h)[:, None] - 0.5
  xs = left[:, None] + (np.arange(out_w) + 0.5) * (box_w / out_w)[:, None] - 0.5
  if flips is not None:
    xs = np.where(flips[:, None], xs[:, ::-1], xs)
  ys, xs = np.clip(ys, 0, height - 1), np.clip(xs, 0, width - 1)
  y0, x0 = np.floor(ys).astype(np.intp), np.floor(xs).astype(np.intp)
  y1, x1 = np.minimum(y0 + 1, height - 1), np.minimum(x0 + 1, width - 1)
  wy = (ys - y0).astype(np.float32)[:, :, None, None]
  wx = (xs - x0).astype(np.float32)[:, None, :, None]
  batch = np.arange(count)[:, None, None]

  def gather(rows: np.ndarray, cols: np.ndarray) -> np.ndarray:
    return images[batch, rows[:, :, None], cols[:, None, :]].astype(np.float32)

  upper = gather(y0, x0) * (1 - wx) + gather(y0, x1) * wx
  lower = gather(y1, x0) * (1 - wx) + gather(y1, x1) * wx
  return upper * (1 - wy) + lower * wy


def resize(images: np.ndarray, size: tuple[int, int]) -> np.ndarray:
  """Resizes uint8 images to `size` (bilinear), keeping uint8."""
  count, height, width, _ = images.shape
  if (height, width) == tuple(size):
    return images
  boxes = np.tile(np.asarray([0.0, 0.0, height, width]), (count, 1))
  resized = crop_and_resize(images, boxes, size)
  return np.clip(np.rint(resized), 0, 255).astype(np.uint8)
