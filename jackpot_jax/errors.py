"""The one error family of bad input, and the one way a command reports it.

Every check in the library raises `ValueError` (or a subclass below) with a one-line
message that names the problem and the fix. `exit_on_user_error` turns those, and the
OSErrors of a path the user gave, into `<program>: error: <message>` on stderr with exit
status 2; the command line, the experiments and the benchmarks all go through it.
"""

from __future__ import annotations

import contextlib
import difflib
import errno
import os
import sys
from typing import Iterable, Iterator


class NonFiniteError(ValueError):
  """The loss or the scores became NaN or Inf; the user fixes it through the config."""


class CheckpointError(ValueError):
  """A checkpoint (or masks file) cannot be used as asked."""


class CheckpointReadError(CheckpointError):
  """The file is truncated, damaged, or not a PyTorch / safetensors checkpoint at all."""


class CheckpointNotFoundError(CheckpointReadError, FileNotFoundError):
  """The path does not name a file; also a FileNotFoundError for callers that catch those."""


class CheckpointMismatchError(CheckpointError):
  """Checkpoint tensors and model variables do not correspond one to one with equal shapes."""


class MasksFileError(CheckpointError):
  """A masks file was made for other weights, or its layers do not fit the model."""


# ValueError: every validation raises it or a subclass. The OSError subclasses: a path
# from the user that cannot be used.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
               NotADirectoryError)


def is_disk_full(error: BaseException) -> bool:
  return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)


def one_line(error: BaseException, limit: int | None = None) -> str:
  """`Type: first line of the message` (capped at `limit` characters), to quote a
  library's error inside ours: TensorStore's, for one, run to many lines."""
  lines = str(error).strip().splitlines()
  text = f"{type(error).__name__}: {lines[0]}" if lines else type(error).__name__
  return text if limit is None or len(text) <= limit else text[:limit] + "..."


def did_you_mean(word: str, choices: Iterable[str], most: int = 3) -> str:
  """" (did you mean 'x' or 'y'?)": the choices closest to a misspelt `word` (difflib's
  ratio at least 0.6, and within 0.05 of the best, at most `most`), or "" when none is."""
  def ratio(choice: str) -> float:
    return difflib.SequenceMatcher(None, str(word), choice).ratio()

  ranked = sorted(((ratio(c), c) for c in set(choices)), key=lambda rc: (-rc[0], rc[1]))
  if not ranked or ranked[0][0] < 0.6:
    return ""
  close = [repr(c) for r, c in ranked[:most] if r >= max(0.6, ranked[0][0] - 0.05)]
  return f" (did you mean {', '.join(close[:-1]) + ' or ' if close[:-1] else ''}{close[-1]}?)"


def fail(program: str, message: str) -> None:
  """Prints `<program>: error: <message>` on one line and exits with status 2."""
  print(f"{program}: error: {' '.join(str(message).split())}", file=sys.stderr)
  sys.exit(2)


@contextlib.contextmanager
def exit_on_user_error(program: str) -> Iterator[None]:
  """Bad input and a full disk end the process in one line with exit status 2; anything
  else is a bug and keeps its traceback."""
  try:
    yield
  except USER_ERRORS as error:
    fail(program, str(error))
  except OSError as error:
    if not is_disk_full(error):
      raise
    detail = "" if error.strerror == os.strerror(error.errno) else f" ({error.strerror})"
    fail(program, f"no space left on the device while writing {error.filename or 'the output'}"
         f"{detail}; free space or choose another --workdir/--output and rerun: complete "
         "checkpoints and files are kept")
