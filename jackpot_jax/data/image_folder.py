"""Image-folder datasets: root/train/<class>/... and root/val/<class>/... or root/test/<class>/...

torchvision's ImageFolder layout (ImageNet's is train/ + val/). Class names are the
subdirectory names of train/, sorted; a class's images are every .jpg, .jpeg, .png, .webp
or .bmp file (any case) under its directory, nested folders included, in torchvision's
order. Images are decoded with PIL into memory once, so this suits small folders.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jackpot_jax.data.arrays import ArrayDataset, make_array_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# The evaluation split's directory, in order of preference: test/ measures the final
# accuracy where a folder has both.
EVAL_DIRECTORIES = ("test", "val")
_LAYOUT = ("lay it out as <root>/train/<class>/<image> plus <root>/val/<class>/<image> or "
           "<root>/test/<class>/<image>, images ending in " + "/".join(IMAGE_EXTENSIONS))


def _class_images(class_dir: str) -> list[str]:
  """The images under `class_dir`, nested folders included, in torchvision's order."""
  return [os.path.join(folder, name)
          for folder, _, names in sorted(os.walk(class_dir, followlinks=True))
          for name in sorted(names) if name.lower().endswith(IMAGE_EXTENSIONS)]


def _scan_split(split_dir: str) -> dict[str, list[str]]:
  classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
  files = {name: _class_images(os.path.join(split_dir, name)) for name in classes}
  if not any(files.values()):
    raise ValueError(f"image folder {split_dir} has no images in class subdirectories; "
                     f"{_LAYOUT}")
  return files


def scan_image_folder(root: str) -> dict[str, dict[str, list[str]]]:
  """Lists the image files of each class of the 'train' split and of the 'test' split (the
  folder's test/ directory, or val/ where it has none).

  Raises:
    ValueError (one line): train/ or both val/ and test/ are missing, a split holds no
      images, or the two splits have different classes.
  """
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise ValueError(f"image folder {root} has no train/ directory; {_LAYOUT}")
  eval_dirs = [name for name in EVAL_DIRECTORIES if os.path.isdir(os.path.join(root, name))]
  if not eval_dirs:
    raise ValueError(f"image folder {root} has neither a val/ nor a test/ directory; "
                     f"{_LAYOUT}")
  eval_name = eval_dirs[0]
  files = {"train": _scan_split(train_dir),
           "test": _scan_split(os.path.join(root, eval_name))}
  train_classes, eval_classes = set(files["train"]), set(files["test"])
  if train_classes != eval_classes:
    raise ValueError(f"image folder {root}: train and {eval_name} classes differ (only in "
                     f"train: {sorted(train_classes - eval_classes)}, only in {eval_name}: "
                     f"{sorted(eval_classes - train_classes)}); give both the same class "
                     "subdirectories")
  return files


def _decode(path: str, mode: str, image_size: int | None) -> np.ndarray:
  with Image.open(path) as image:
    image = image.convert(mode)
    if image_size is not None and image.size != (image_size, image_size):
      # PIL's bilinear filter antialiases when it shrinks, unlike a plain resample.
      image = image.resize((image_size, image_size), Image.Resampling.BILINEAR)
    return np.asarray(image, np.uint8).reshape(image.height, image.width, -1)


def load_image_folder(root: str, channels: int = 3,
                      image_size: int | None = None) -> ArrayDataset:
  """Decodes every image of both splits into uint8 arrays.

  Args:
    root: folder holding train/ and val/ or test/ (see `scan_image_folder`).
    channels: 1 decodes to grayscale, 3 to RGB.
    image_size: resize every image to this square side; None requires all images to
      share one size.

  Raises:
    ValueError (one line): see `scan_image_folder`, or images of different sizes when
      `image_size` is None.
  """
  files = scan_image_folder(root)
  class_names = tuple(sorted(files["train"]))
  mode = "L" if channels == 1 else "RGB"
  splits = {}
  for split in ("train", "test"):
    images, labels = [], []
    for label, name in enumerate(class_names):
      for path in files[split][name]:
        images.append(_decode(path, mode, image_size))
        labels.append(label)
    shapes = {image.shape for image in images}
    if len(shapes) > 1:
      raise ValueError(f"image folder {root}: images differ in size ({sorted(shapes)[:2]} "
                       "...); set data.image_size to resize them")
    splits[split] = (np.stack(images), np.asarray(labels, np.int32))
  return make_array_dataset(f"image folder {root}", splits["train"], splits["test"],
                            class_names)
