"""`profile_steps`: a `jax.profiler` trace of a range of steps, for TensorBoard's profiler.

  --config.profile_steps=A,B   traces steps A..B (inclusive) into <workdir>/profile/

For a workdir in a bucket the trace is written to a local temporary folder and uploaded
when it ends: the profiler's own writer only knows local files.
"""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path
from typing import Any

import jax

from jackpot_jax import fileio


def parse_profile_steps(text: str) -> tuple[int, int] | None:
  """'A,B' -> (A, B); '' -> None.

  Raises:
    ValueError (one line): not two integers with 1 <= A <= B.
  """
  if not text:
    return None
  try:
    first, last = (int(part) for part in str(text).split(","))
  except ValueError:
    first = last = 0
  if not 1 <= first <= last:
    raise ValueError(f"profile_steps={text!r} must be 'A,B' with 1 <= A <= B, e.g. "
                     "--config.profile_steps=10,20")
  return first, last


class StepProfiler:
  """Starts a trace before step A is dispatched and stops it once step B has finished."""

  def __init__(self, directory: fileio.AnyPath, steps: tuple[int, int] | None):
    self.directory = directory
    self.steps = steps
    self.tracing = False
    self._staging: Path | None = None

  def before(self, step: int) -> None:
    if self.steps is not None and step == self.steps[0] and jax.process_index() == 0:
      if fileio.is_cloud(self.directory):
        self._staging = Path(tempfile.mkdtemp(prefix="jackpot-profile-"))
        trace_directory = self._staging
      else:
        self.directory.mkdir(parents=True, exist_ok=True)
        trace_directory = self.directory
      jax.profiler.start_trace(str(trace_directory))
      self.tracing = True

  def after(self, step: int, outputs: Any) -> None:
    if self.tracing and step == self.steps[1]:
      jax.block_until_ready(outputs)  # the trace holds the whole of step B
      self.close()

  def close(self) -> None:
    """Ends a trace that is still running (a search that stopped inside the range)."""
    if self.tracing:
      self.tracing = False
      jax.profiler.stop_trace()
      if self._staging is not None:
        staging, self._staging = self._staging, None
        try:
          for file in sorted(p for p in staging.rglob("*") if p.is_file()):
            fileio.upload(file, self.directory / str(file.relative_to(staging)))
        finally:
          shutil.rmtree(staging, ignore_errors=True)

  def __enter__(self) -> "StepProfiler":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
