"""Per-example image transforms, one implementation for every source: the CIFAR recipe
(zero-pad and random crop, flip), the ImageNet recipe (random-resized crop and flip for
training; resize and centre crop for evaluation, with torchvision's arithmetic), the
normalisation every batch gets, and the grayscale/RGB conversion data.channels asks for.

Each function takes uint8 (H, W, C) images; random transforms take their parameters, or
a generator seeded by the example's place in the global batch, so an example's
augmentation never depends on the host that computes it.
Resizing goes through PIL's bilinear filter, which antialiases when it shrinks (as
torchvision's PIL path does). Each augmentation (data.augment) is registered by name with
`register_augmentation`.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Callable, Sequence

import numpy as np
from PIL import Image

from jackpot_jax.data.resolved_preprocessing import Preprocessing
from jackpot_jax.registry import Registry


# Random-resized-crop ranges of the standard ImageNet recipe (Szegedy et al. 2015).
RESIZED_CROP_SCALE = (0.08, 1.0)
RESIZED_CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
_RESIZED_CROP_ATTEMPTS = 10
# Evaluation of the ImageNet recipe: resize the shorter side to 256, centre-crop 224.
EVAL_CROP_FRACTION = 224.0 / 256.0
# The side the ImageNet recipe crops to when data.image_size is unset.
IMAGENET_DEFAULT_SIZE = 224


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


def _at_model_size(image: np.ndarray, preprocessing: Preprocessing,
                   shape: tuple[int, int, int]) -> np.ndarray:
  """The image at the model's size: resized to data.image_size, else checked to be `shape`."""
  return fit(image, preprocessing.image_size, shape)


# `train(images, preprocessing, shape, seed, global_size, rows) -> the uint8 images of
# one host's rows of a global training batch, augmented`, with `train_images`' arguments.
TrainTransform = Callable[[list, "Preprocessing", tuple, tuple, int, slice],
                          Sequence[np.ndarray]]
# `evaluate(image, preprocessing, shape) -> one uint8 evaluation image`.
EvalTransform = Callable[[np.ndarray, "Preprocessing", tuple], np.ndarray]


@dataclasses.dataclass(frozen=True)
class AugmentationSpec:
  """A registered augmentation (data.augment).

  Attributes:
    train: the training transform of a batch (`TrainTransform`). Every random draw must
      depend on `seed` and the row's place in the global batch only, never on which host
      transforms it.
    evaluate: the evaluation transform of one image (`EvalTransform`).
    default_size: the square side it crops or resizes to when data.image_size is unset
      (None: the images' own size).
  """

  train: TrainTransform
  evaluate: EvalTransform = _at_model_size
  default_size: int | None = None


AUGMENTATION_REGISTRY: Registry[AugmentationSpec] = Registry("data.augment")


def register_augmentation(name: str, *, evaluate: EvalTransform = _at_model_size,
                          default_size: int | None = None
                          ) -> Callable[[TrainTransform], TrainTransform]:
  """Decorator registering a training transform `train(images, preprocessing, shape, seed,
  global_size, rows)` as data.augment=`name`, evaluated with `evaluate(image,
  preprocessing, shape)` (default: the image at the model's size); see `AugmentationSpec`.
  Returns `train` unchanged."""
  def register(train: TrainTransform) -> TrainTransform:
    AUGMENTATION_REGISTRY.register(name, AugmentationSpec(train, evaluate, default_size))
    return train
  return register


def augmentation_names() -> tuple[str, ...]:
  """Every registered data.augment, in registration order."""
  return AUGMENTATION_REGISTRY.names()


@register_augmentation("cifar")
def _cifar(images, preprocessing, shape, seed, global_size, rows) -> list[np.ndarray]:
  """Zero-pad by data.crop_padding, random crop, random flip. The parameters are drawn for
  all `global_size` rows and sliced."""
  rng = np.random.default_rng(seed)
  offsets = rng.integers(0, 2 * preprocessing.crop_padding + 1, size=(global_size, 2))[rows]
  flips = (rng.random(global_size) < 0.5)[rows]
  return [pad_crop_flip(fit(image, preprocessing.image_size, shape), top, left, flip,
                        preprocessing.crop_padding)
          for image, (top, left), flip in zip(images, offsets, flips)]


def _imagenet_eval(image: np.ndarray, preprocessing: Preprocessing,
                   shape: tuple[int, int, int]) -> np.ndarray:
  """Resize and centre crop (`resize_centre_crop`), whatever the images' size."""
  del shape
  return resize_centre_crop(image, preprocessing.image_size)


@register_augmentation("imagenet", evaluate=_imagenet_eval, default_size=IMAGENET_DEFAULT_SIZE)
def _imagenet(images, preprocessing, shape, seed, global_size, rows) -> list[np.ndarray]:
  """Random-resized crop and flip; each row has a generator seeded by (*seed, row)."""
  del shape, global_size
  return [resized_crop_flip(image, np.random.default_rng([*seed, row]),
                            preprocessing.image_size)
          for row, image in zip(range(rows.start, rows.stop), images)]


@register_augmentation("none")
def _none(images, preprocessing, shape, seed, global_size, rows) -> list[np.ndarray]:
  """The images at the model's size, nothing random."""
  del seed, global_size, rows
  return [_at_model_size(image, preprocessing, shape) for image in images]


def train_images(images: list[np.ndarray], preprocessing: Preprocessing,
                 shape: tuple[int, int, int], seed: tuple[int, ...], global_size: int,
                 rows: slice) -> np.ndarray:
  """One host's rows of a global training batch under `preprocessing.augment`, as float32
  on the [0, 255] scale.

  Every random draw depends on `seed` and the row's place in the global batch, never on
  which host transforms it.

  Args:
    images: the uint8 images of rows[0], rows[0] + 1, ... of the global batch.
    shape: the dataset's (H, W, C) when `preprocessing.image_size` is None (checked, not
      resized to).
    seed: integers naming the global batch (run seed, step).
    global_size: the rows of the global batch.
    rows: this host's rows of it.
  """
  train = AUGMENTATION_REGISTRY.get(preprocessing.augment).train
  out = train(images, preprocessing, shape, seed, global_size, rows)
  return np.stack(out).astype(np.float32)


def eval_image(image: np.ndarray, preprocessing: Preprocessing,
               shape: tuple[int, int, int]) -> np.ndarray:
  """One evaluation example through `preprocessing.augment`'s evaluation transform: the
  ImageNet recipe's resize and centre crop, else the image at the model's size."""
  return AUGMENTATION_REGISTRY.get(preprocessing.augment).evaluate(image, preprocessing, shape)
