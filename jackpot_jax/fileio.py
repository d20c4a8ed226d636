"""Local paths, and atomic output files: written under a temporary name, then renamed.

A crash or a full disk never leaves a truncated file under the real name, and readers
see either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import shutil
import tempfile
from pathlib import Path
from typing import Any, Iterator


# scheme://... (gs://, s3://, https://): pathlib would read it as a local folder "gs:".
_URL = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*://")


def local_path(path: str | os.PathLike, what: str) -> Path:
  """`path` as a local Path; a cloud URL is refused in one line instead of silently
  becoming a local folder named "gs:".

  Raises:
    ValueError: `path` is a URL.
  """
  text = os.fspath(path)
  if _URL.match(text):
    raise ValueError(f"{what} {text} is a URL; this version reads and writes local paths "
                     "only: mount the bucket (e.g. with gcsfuse) and pass the mounted path")
  return Path(text)


def _new_file_mode() -> int:
  """The mode open() gives a new file under this process's umask (mkstemp gives 0600)."""
  umask = os.umask(0o022)
  os.umask(umask)
  return 0o666 & ~umask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_NEW_FILE_MODE = _new_file_mode()
# Free bytes below which a failed write is taken for a full disk (see _looks_like_disk_full).
_NEARLY_FULL = 1 << 20


def _looks_like_disk_full(error: Exception, directory: Path) -> bool:
  """Whether `error`, not an OSError, raised while writing into `directory` means ENOSPC.

  torch.save reports a short write as a RuntimeError with no errno ("unexpected pos"),
  safetensors as its own error type, so a disk left almost without space counts too.
  """
  return ("No space left on device" in str(error)
          or shutil.disk_usage(directory).free < _NEARLY_FULL)


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a temporary path beside `path`; renames it onto `path` if the block succeeds.

  Raises:
    OSError(ENOSPC): the disk filled up, whichever library was writing.
  """
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.fchmod(fd, _NEW_FILE_MODE)
  os.close(fd)
  try:
    yield Path(tmp)
    with open(tmp, "rb") as f:
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except Exception as error:
    if isinstance(error, OSError) or not _looks_like_disk_full(error, path.parent):
      raise
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(path)) from error
  finally:
    if os.path.exists(tmp):
      os.remove(tmp)


def write_text(path: str | os.PathLike, text: str) -> None:
  with atomic_path(path) as tmp:
    tmp.write_text(text)


def write_json(path: str | os.PathLike, value: Any) -> None:
  write_text(path, json.dumps(value, indent=2, sort_keys=False) + "\n")
