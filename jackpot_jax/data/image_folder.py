"""Image-folder datasets: root/{train,test}/<class>/<image>.{jpg,jpeg,png}.

This is the layout TFDS's ImageFolder reads. Images are decoded with PIL into memory
once, so this suits small folders; class names are the sorted subdirectory names.
"""

from __future__ import annotations

import os

import numpy as np
from PIL import Image

from jackpot_jax.data.arrays import ArrayDataset, make_array_dataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
SPLITS = ("train", "test")


def scan_image_folder(root: str) -> dict[str, dict[str, list[str]]]:
  """Lists the image files of each split and class, sorted for a deterministic order.

  Raises:
    ValueError (one line): a split directory is missing or holds no images, or the two
      splits have different classes.
  """
  layout = "lay it out as <root>/{train,test}/<class>/*.png|jpg"
  files = {}
  for split in SPLITS:
    split_dir = os.path.join(root, split)
    if not os.path.isdir(split_dir):
      raise ValueError(f"image folder {root} has no {split}/ directory; {layout}")
    classes = sorted(entry.name for entry in os.scandir(split_dir) if entry.is_dir())
    files[split] = {
        name: sorted(os.path.join(split_dir, name, file)
                     for file in os.listdir(os.path.join(split_dir, name))
                     if file.lower().endswith(IMAGE_EXTENSIONS))
        for name in classes
    }
    if not any(files[split].values()):
      raise ValueError(f"image folder {split_dir} has no .jpg/.jpeg/.png images in class "
                       f"subdirectories; {layout}")
  train_classes, test_classes = set(files["train"]), set(files["test"])
  if train_classes != test_classes:
    raise ValueError(f"image folder {root}: train and test classes differ (only in train: "
                     f"{sorted(train_classes - test_classes)}, only in test: "
                     f"{sorted(test_classes - train_classes)}); give both the same class "
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
    root: folder holding train/ and test/.
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
  for split in SPLITS:
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
