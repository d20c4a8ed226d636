"""`profile_steps`: a `jax.profiler` trace of a range of steps, for TensorBoard's profiler.

  --config.profile_steps=A,B   traces steps A..B (inclusive) into <workdir>/profile/
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import jax


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

  def __init__(self, directory: Path, steps: tuple[int, int] | None):
    self.directory = directory
    self.steps = steps
    self.tracing = False

  def before(self, step: int) -> None:
    if self.steps is not None and step == self.steps[0] and jax.process_index() == 0:
      self.directory.mkdir(parents=True, exist_ok=True)
      jax.profiler.start_trace(str(self.directory))
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

  def __enter__(self) -> "StepProfiler":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
