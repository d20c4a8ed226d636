"""Image-folder datasets: root/train/<class>/... and root/val/<class>/... or root/test/<class>/...

torchvision's ImageFolder layout (ImageNet's is train/ + val/). Class names are the
subdirectory names of train/, sorted; a class's images are every .jpg, .jpeg, .png, .webp
or .bmp file (any case) under its directory, nested folders included, in torchvision's
order. Only the file names are held in memory: each image is decoded with PIL when the
input pipeline reads it, in Grain's worker processes where data.workers > 0.
"""

from __future__ import annotations

import os

import dataclasses

import numpy as np
from PIL import Image

from jackpot_jax.data.records import SourceDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# The evaluation splits' directories; 'test' (data.eval_split's default) reads val/ where
# a folder has no test/.
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
  """Lists the image files of each class of 'train' and of each of 'val' and 'test' the
  folder has.

  Raises:
    ValueError (one line): train/ or both val/ and test/ are missing, a split holds no
      images, or a split's classes differ from train's.
  """
  train_dir = os.path.join(root, "train")
  if not os.path.isdir(train_dir):
    raise ValueError(f"image folder {root} has no train/ directory; {_LAYOUT}")
  eval_names = [name for name in EVAL_DIRECTORIES if os.path.isdir(os.path.join(root, name))]
  if not eval_names:
    raise ValueError(f"image folder {root} has neither a val/ nor a test/ directory; "
                     f"{_LAYOUT}")
  files = {"train": _scan_split(train_dir)}
  for name in eval_names:
    files[name] = _scan_split(os.path.join(root, name))
    train_classes, eval_classes = set(files["train"]), set(files[name])
    if train_classes != eval_classes:
      raise ValueError(f"image folder {root}: train and {name} classes differ (only in "
                       f"train: {sorted(train_classes - eval_classes)}, only in {name}: "
                       f"{sorted(eval_classes - train_classes)}); give both the same class "
                       "subdirectories")
  return files


@dataclasses.dataclass(frozen=True)
class FolderSplit:
  """One split of an image folder: file paths and labels; images decode on access."""
  paths: tuple[str, ...]
  labels: np.ndarray
  mode: str

  def __len__(self) -> int:
    return len(self.paths)

  def __getitem__(self, index: int) -> tuple[np.ndarray, int]:
    path = self.paths[index]
    try:
      with Image.open(path) as image:
        image = image.convert(self.mode)
        pixels = np.asarray(image, np.uint8).reshape(image.height, image.width, -1)
    except OSError as error:
      raise ValueError(f"image {path} cannot be decoded ({type(error).__name__}); remove "
                       "or replace it") from error
    return pixels, int(self.labels[index])

  def read(self, indices: np.ndarray) -> list[tuple[np.ndarray, int]]:
    return [self[int(index)] for index in indices]


def open_image_folder(root: str, channels: int = 3) -> SourceDataset:
  """The folder's splits ('train', and 'val' and/or 'test'), decoded on access.

  Args:
    root: folder holding train/ and val/ or test/ (see `scan_image_folder`).
    channels: 1 decodes to grayscale, 3 to RGB.

  Raises:
    ValueError (one line): see `scan_image_folder`.
  """
  files = scan_image_folder(root)
  class_names = tuple(sorted(files["train"]))
  mode = "L" if channels == 1 else "RGB"
  splits = {}
  for split, by_class in files.items():
    paths = [path for name in class_names for path in by_class[name]]
    labels = [label for label, name in enumerate(class_names) for _ in by_class[name]]
    splits[split] = FolderSplit(tuple(paths), np.asarray(labels, np.int32), mode)
  return SourceDataset(f"image folder {root}", splits, class_names)
