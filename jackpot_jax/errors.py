"""Which exceptions mean "bad input or a run gone wrong" (one line, exit 2), not a bug."""

from __future__ import annotations

import errno


class NonFiniteError(RuntimeError):
  """The loss or the scores became NaN or Inf; the user fixes it through the config."""


# ValueError: every validation in the library raises it (or a subclass) with a one-line
# message naming the problem and the fix. The OSError subclasses: a path from the user
# that cannot be used.
USER_ERRORS = (ValueError, FileNotFoundError, PermissionError, IsADirectoryError,
               NotADirectoryError, NonFiniteError)


def is_disk_full(error: BaseException) -> bool:
  return isinstance(error, OSError) and error.errno in (errno.ENOSPC, errno.EDQUOT)
