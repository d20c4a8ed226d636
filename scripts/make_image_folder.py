"""Writes a subset of Fashion-MNIST as an image-folder tree (root/{train,test}/<class>/*.png).

A stand-in for a user's own image folder, built offline from Debian's files, to exercise
the `image_folder:<root>` path of the search and the experiments end to end.

  python scripts/make_image_folder.py --root=data_cache/fashion_folder --train=6000 --test=1000
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
from absl import app, flags
from PIL import Image

from jackpot_jax.data.fashion_mnist import DEBIAN_SOURCE_DIR, read_fashion_mnist

FLAGS = flags.FLAGS
flags.DEFINE_string("root", "data_cache/fashion_folder", "folder to write")
flags.DEFINE_integer("train", 6000, "training images (the first N of the training split)")
flags.DEFINE_integer("test", 1000, "test images (the first N of the test split)")

CLASSES = ("t_shirt", "trouser", "pullover", "dress", "coat", "sandal", "shirt", "sneaker",
           "bag", "ankle_boot")


def main(argv):
  del argv
  root = Path(FLAGS.root)
  for split, count in (("train", FLAGS.train), ("test", FLAGS.test)):
    images, labels = read_fashion_mnist(DEBIAN_SOURCE_DIR, split)
    for index in range(count):
      # "<label>_<name>": folder names sort in label order, so class i of the folder is
      # class i of the shipped checkpoint's classifier.
      label = int(labels[index])
      folder = root / split / f"{label}_{CLASSES[label]}"
      folder.mkdir(parents=True, exist_ok=True)
      Image.fromarray(np.squeeze(images[index], -1)).save(folder / f"{index:05d}.png")
  print(f"wrote {FLAGS.train} training and {FLAGS.test} test images under {root}")


if __name__ == "__main__":
  app.run(main)
