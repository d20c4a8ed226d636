"""Paths local or in a bucket, and atomic output files.

Every path the user gives goes through `as_path`: a local path stays a `pathlib.Path`, a
`gs://` URL becomes an `etils.epath.Path` (the abstraction Orbax and TFDS use), so a
bucket is never mistaken for a local folder named "gs:". Both kinds share the pathlib
methods the project calls (`/`, `exists`, `read_text`, `iterdir`, `open`).

Outputs are atomic: a local file is written under a temporary name, then renamed; a
bucket object is uploaded from a local temporary file in one request, and a cloud object
only appears once its upload completes. A crash or a full disk never leaves a truncated
file under the real name, and readers see either the old file or the complete new one.
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import threading
from pathlib import Path
from typing import Any, Callable, Iterator, Union

# epath reaches gs:// through TensorFlow's gfile when TensorFlow is importable, else through
# gcsfs. gcsfs is what the tests run against an emulator (TensorFlow's client has its
# endpoint compiled in), and it keeps TensorFlow's runtime out of the process that runs
# XLA; EPATH_USE_TF=true in the environment restores epath's own choice.
os.environ.setdefault("EPATH_USE_TF", "false")

from etils import epath  # noqa: E402  (reads EPATH_USE_TF on its first gs:// call)

from jackpot_jax import errors  # noqa: E402

AnyPath = Union[Path, epath.Path]

# scheme://... (gs://, s3://, https://): pathlib would read it as a local folder "gs:".
_URL = re.compile(r"^([A-Za-z][A-Za-z0-9+.-]*)://")
CLOUD_SCHEMES = ("gs",)
# How long a first request to a bucket may take before the path counts as unreachable:
# gcsfs retries a refused connection 6 times (~35 s) and a stalled one without end, while
# a reachable bucket answers a first request (token refresh included) in about a second.
REACH_TIMEOUT_SECONDS = 8.0


def is_cloud(path: str | os.PathLike) -> bool:
  """Whether `path` is a Cloud Storage URL (gs://)."""
  match = _URL.match(os.fspath(path))
  return match is not None and match.group(1).lower() in CLOUD_SCHEMES


def as_path(path: str | os.PathLike, what: str) -> AnyPath:
  """`path` as a local Path or, for a gs:// URL, an epath.Path.

  Raises:
    ValueError: a URL of another scheme (https://, file://...).
  """
  if isinstance(path, epath.Path) and not isinstance(path, Path):
    return path
  text = os.fspath(path)
  match = _URL.match(text)
  if match is None:
    return Path(text)
  if match.group(1).lower() not in CLOUD_SCHEMES:
    raise ValueError(f"{what} {text} is a {match.group(1)}:// URL; use a local path or a "
                     "gs://bucket/path")
  return epath.Path(text)


def _within_deadline(action: Callable[[], Any], seconds: float) -> Any:
  """`action()`, or TimeoutError after `seconds`; a daemon thread so a hung request
  cannot keep the process alive after the error."""
  outcome: dict[str, Any] = {}

  def target():
    try:
      outcome["value"] = action()
    except BaseException as error:  # handed to the caller's thread below
      outcome["error"] = error

  thread = threading.Thread(target=target, name="bucket-probe", daemon=True)
  thread.start()
  thread.join(seconds)
  if thread.is_alive():
    raise TimeoutError(f"no answer within {seconds:.0f} s")
  if "error" in outcome:
    raise outcome["error"]
  return outcome.get("value")


def check_reachable(path: AnyPath, what: str, *, writable: bool = False,
                    must_exist: bool = False) -> None:
  """Fails fast, in one line, when a bucket path cannot be used; local paths pass.

  One request (a write and delete of a probe object with `writable`, else an existence
  check) runs under a deadline, so no network, no credentials or no such bucket ends in
  seconds instead of a client's retries for minutes.

  Raises:
    ValueError: the bucket cannot be reached, or `must_exist` and `path` does not exist.
  """
  if not is_cloud(path):
    return

  def probe() -> bool:
    if writable:
      marker = path / f".jackpot_write_probe.{socket.gethostname()}.{os.getpid()}"
      marker.write_text("")
      marker.unlink()
      return True
    return path.exists()

  # gcsfs logs each failed request's traceback before raising; the error below says it.
  gcsfs_logger = logging.getLogger("gcsfs")
  level = gcsfs_logger.level
  gcsfs_logger.setLevel(logging.CRITICAL)
  try:
    exists = _within_deadline(probe, REACH_TIMEOUT_SECONDS)
  except Exception as error:  # any failure of the first request: say which, in one line
    raise ValueError(f"{what} {path} cannot be reached ({errors.one_line(error, 200)}); check "
                     "the bucket name, the network and the credentials "
                     "(gcloud auth application-default login)") from error
  finally:
    gcsfs_logger.setLevel(level)
  if must_exist and not exists:
    raise errors.CheckpointNotFoundError(f"{what} {path} does not exist")


# Bytes per read when copying to or from a bucket: large enough for few requests, small
# enough to keep the copy's memory flat.
_COPY_CHUNK = 16 << 20


def upload(local: Path, target: AnyPath) -> None:
  """Copies the local file `local` to the bucket object `target` in one object write."""
  with open(local, "rb") as source, target.open("wb") as destination:
    shutil.copyfileobj(source, destination, _COPY_CHUNK)


@contextlib.contextmanager
def local_file(path: AnyPath, what: str) -> Iterator[Path]:
  """A local file with `path`'s content, for readers that need a seekable local file:
  `path` itself, or a bucket object downloaded into a temporary directory (removed
  afterwards). A CheckpointError raised in the block names `path`, not the download.

  Raises:
    ValueError: the bucket cannot be reached; CheckpointNotFoundError: no such object.
  """
  if not is_cloud(path):
    yield Path(path)
    return
  check_reachable(path, what, must_exist=True)
  with tempfile.TemporaryDirectory(prefix="jackpot-download-") as directory:
    local = Path(directory) / path.name
    with path.open("rb") as source, open(local, "wb") as target:
      shutil.copyfileobj(source, target, _COPY_CHUNK)
    try:
      yield local
    except errors.CheckpointError as error:
      raise type(error)(str(error).replace(str(local), str(path))) from error


def _umask() -> int:
  umask = os.umask(0o022)
  os.umask(umask)
  return umask


# Read once at import: os.umask can only be read by setting it, which is not thread-safe.
_UMASK = _umask()
# The modes open() and mkdir() give under this process's umask (mkstemp gives 0600,
# mkdtemp 0700).
NEW_FILE_MODE = 0o666 & ~_UMASK
NEW_DIRECTORY_MODE = 0o777 & ~_UMASK
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
def atomic_folder(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a hidden temporary folder beside `path`; if the block succeeds, it becomes
  `path` (which must not exist or be empty) in one rename, its files given the modes
  open() and mkdir() give (writers such as safetensors create files 0600). On failure
  the temporary folder is removed: the folder appears complete or not at all."""
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  temporary = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
  try:
    os.chmod(temporary, NEW_DIRECTORY_MODE)
    yield temporary
    for written in temporary.rglob("*"):
      os.chmod(written, NEW_DIRECTORY_MODE if written.is_dir() else NEW_FILE_MODE)
    if path.exists():
      path.rmdir()  # only an empty folder may be replaced
    os.replace(temporary, path)
  except BaseException:
    shutil.rmtree(temporary, ignore_errors=True)
    raise


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike) -> Iterator[Path]:
  """Yields a local temporary path; if the block succeeds, it becomes `path` (renamed onto
  a local path, uploaded in one object write to a bucket path).

  Raises:
    OSError(ENOSPC): the disk filled up, whichever library was writing.
  """
  if is_cloud(path):
    target = as_path(path, "output")
    with tempfile.TemporaryDirectory(prefix="jackpot-upload-") as directory:
      local = Path(directory) / target.name
      yield local
      upload(local, target)
    return
  path = Path(path)
  path.parent.mkdir(parents=True, exist_ok=True)
  fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
  os.fchmod(fd, NEW_FILE_MODE)
  os.close(fd)
  try:
    yield Path(tmp)
    # Again: a writer may replace the file rather than fill it (safetensors writes 0600).
    os.chmod(tmp, NEW_FILE_MODE)
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
