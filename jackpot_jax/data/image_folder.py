"""Image-folder datasets: root/train/<class>/... and root/val/<class>/... or root/test/<class>/...

torchvision's ImageFolder layout (ImageNet's is train/ + val/). Class names are the
subdirectory names of train/, sorted; a class's images are every .jpg, .jpeg, .png, .webp
or .bmp file (any case) under its directory, nested folders included, in torchvision's
order. Only the file names are held in memory: each image is decoded with PIL when the
input pipeline reads it, in Grain's worker processes where data.workers > 0, to one
channel (grayscale) or three (RGB). The root may be a local folder or a gs:// one (listed
and read through etils.epath).
"""

from __future__ import annotations

from concurrent import futures
import contextlib
import dataclasses
import io
import os
from typing import Iterator, Sequence

from etils import epath
import numpy as np
from PIL import Image, ImageMode

from jackpot_jax import fileio
from jackpot_jax.data.records import SourceDataset

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp")
# The evaluation splits' directories; 'test' (data.eval_split's default) reads val/ where
# a folder has no test/.
EVAL_DIRECTORIES = ("test", "val")
# Training images whose modes set a folder's channel count when data.channels is unset:
# evenly spaced over the class-sorted files, so a small folder's every class is looked
# at; only their headers are read.
CHANNEL_SAMPLE = 32
_LAYOUT = ("lay it out as <root>/train/<class>/<image> plus <root>/val/<class>/<image> or "
           "<root>/test/<class>/<image>, images ending in " + "/".join(IMAGE_EXTENSIONS))


def _walk(directory: str) -> list[tuple[str, list[str]]]:
  """(folder, file names) of every folder under `directory`, in sorted folder order."""
  if fileio.is_cloud(directory):
    # gcsfs names the folders it walks without their scheme.
    walked = ((f"gs://{os.fspath(folder).removeprefix('gs://')}", files)
              for folder, _, files in epath.Path(directory).walk())
  else:
    walked = ((folder, files) for folder, _, files in os.walk(directory, followlinks=True))
  return sorted(walked)


def _class_images(class_dir: str) -> list[str]:
  """The images under `class_dir`, nested folders included, in torchvision's order."""
  return [f"{folder.rstrip('/')}/{name}" for folder, names in _walk(class_dir)
          for name in sorted(names) if name.lower().endswith(IMAGE_EXTENSIONS)]


def _is_dir(path: str) -> bool:
  return epath.Path(path).is_dir() if fileio.is_cloud(path) else os.path.isdir(path)


def _scan_split(split_dir: str) -> dict[str, list[str]]:
  classes = sorted(entry.name for entry in epath.Path(split_dir).iterdir() if entry.is_dir())
  files = {name: _class_images(f"{split_dir}/{name}") for name in classes}
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
  root = root.rstrip("/")
  train_dir = f"{root}/train"
  if not _is_dir(train_dir):
    raise ValueError(f"image folder {root} has no train/ directory; {_LAYOUT}")
  eval_names = [name for name in EVAL_DIRECTORIES if _is_dir(f"{root}/{name}")]
  if not eval_names:
    raise ValueError(f"image folder {root} has neither a val/ nor a test/ directory; "
                     f"{_LAYOUT}")
  files = {"train": _scan_split(train_dir)}
  for name in eval_names:
    files[name] = _scan_split(f"{root}/{name}")
    train_classes, eval_classes = set(files["train"]), set(files[name])
    if train_classes != eval_classes:
      raise ValueError(f"image folder {root}: train and {name} classes differ (only in "
                       f"train: {sorted(train_classes - eval_classes)}, only in {name}: "
                       f"{sorted(eval_classes - train_classes)}); give both the same class "
                       "subdirectories")
  return files


@contextlib.contextmanager
def _opened(path: str) -> Iterator[Image.Image]:
  """The image at `path` opened with PIL (pixels decode on first use).

  Raises:
    ValueError (one line): PIL cannot read the file, naming it.
  """
  try:
    source = io.BytesIO(epath.Path(path).read_bytes()) if fileio.is_cloud(path) else path
    with Image.open(source) as image:
      yield image
  except OSError as error:
    raise ValueError(f"image {path} cannot be decoded ({type(error).__name__}); remove "
                     "or replace it") from error


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
    with _opened(path) as image:
      image = image.convert(self.mode)
      pixels = np.asarray(image, np.uint8).reshape(image.height, image.width, -1)
    return pixels, int(self.labels[index])

  def read(self, indices: np.ndarray) -> list[tuple[np.ndarray, int]]:
    return [self[int(index)] for index in indices]

  def check_one_size(self, description: str,
                     reference: tuple[str, tuple[int, int]] | None = None
                     ) -> tuple[str, tuple[int, int]]:
    """Reads every image's header (not its pixels) to check they share one size, the
    size of `reference` (an image path and its size) when given, so a folder that needs
    data.image_size fails before the search, not at its first odd image.

    Returns:
      `reference`, or this split's first image and its size.
    Raises:
      ValueError (one line): two sizes, naming an image of each.
    """
    def size(path: str) -> tuple[int, int]:
      with _opened(path) as image:
        return image.size

    with futures.ThreadPoolExecutor(max_workers=8) as pool:
      sizes = list(pool.map(size, self.paths))
    first, (first_w, first_h) = reference or (self.paths[0], sizes[0])
    for path, (width, height) in zip(self.paths, sizes):
      if (width, height) != (first_w, first_h):
        raise ValueError(f"{description}: images differ in size ({first} is "
                         f"{first_w}x{first_h}, {path} is {width}x{height}); set "
                         "data.image_size to resize them")
    return first, (first_w, first_h)


def image_channels(paths: Sequence[str]) -> int:
  """3 if any of (a sample of) the images at `paths` has colour, else 1.

  A grayscale folder decodes to one channel, a colour one (a few grayscale images
  among colour ones, as in ImageNet, included) to three. Images that cannot be opened are
  passed over here: reading them fails later, naming them.
  """
  picks = np.unique(np.linspace(0, len(paths) - 1, min(len(paths), CHANNEL_SAMPLE)).astype(int))

  def mode(path: str) -> str | None:
    try:
      with _opened(path) as image:
        return image.mode
    except ValueError:
      return None

  with futures.ThreadPoolExecutor(max_workers=8) as pool:
    modes = [m for m in pool.map(mode, [paths[i] for i in picks]) if m is not None]
  grayscale = modes and all(ImageMode.getmode(m).basemode == "L" for m in modes)
  return 1 if grayscale else 3


def open_image_folder(root: str, channels: int | None = None) -> SourceDataset:
  """The folder's splits ('train', and 'val' and/or 'test'), decoded on access.

  Args:
    root: folder holding train/ and val/ or test/ (see `scan_image_folder`).
    channels: 1 decodes to grayscale, 3 to RGB; None: as `image_channels` finds in the
      training images.

  Raises:
    ValueError (one line): see `scan_image_folder`, or a gs:// root cannot be reached.
  """
  fileio.check_reachable(fileio.as_path(root, "data.name"), "image folder")
  files = scan_image_folder(root)
  class_names = tuple(sorted(files["train"]))
  if channels is None:
    channels = image_channels([path for name in class_names for path in files["train"][name]])
  mode = "L" if channels == 1 else "RGB"
  splits = {}
  for split, by_class in files.items():
    paths = [path for name in class_names for path in by_class[name]]
    labels = [label for label, name in enumerate(class_names) for _ in by_class[name]]
    splits[split] = FolderSplit(tuple(paths), np.asarray(labels, np.int32), mode)
  return SourceDataset(f"image folder {root}", splits, class_names)
