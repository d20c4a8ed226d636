"""Progress bar and TensorBoard scalars, written by process 0 only."""

from __future__ import annotations

import errno
import logging
import os
from pathlib import Path

import jax


class ProgressLogger:
  """Progress bar and TensorBoard scalars on process 0 only."""

  def __init__(self, workdir: Path, total: int, start: int, enabled: bool):
    self.is_writer = jax.process_index() == 0
    self.directory = workdir / "tensorboard"
    self.bar = None
    self.writer = None
    if self.is_writer:
      from flax.metrics import tensorboard
      self.writer = tensorboard.SummaryWriter(str(self.directory))
      if enabled:
        import tqdm
        self.bar = tqdm.tqdm(total=total, initial=start, desc="search", unit="step",
                             dynamic_ncols=True)

  def step(self, step: int, metrics: dict | None, advanced: int) -> None:
    if self.bar is not None:
      self.bar.update(advanced)
      if metrics is not None:
        self.bar.set_postfix(loss=f"{metrics['loss']:.3f}", acc=f"{metrics['accuracy']:.3f}",
                             flips=int(metrics["mask_flips"]))
    if metrics is not None:
      self.scalars(step, {f"search/{key}": value for key, value in metrics.items()})

  def scalars(self, step: int, values: dict) -> None:
    if self.writer is None:
      return
    try:
      for key, value in values.items():
        self.writer.scalar(key, float(value), step)
    except Exception as error:  # TensorFlow reports a full disk as its own error type
      if "No space left on device" not in str(error):
        raise
      raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self.directory)) from error

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      try:  # closed, not just flushed: one open file per run otherwise
        self.writer.close()
      except Exception as error:  # losing the last events must not hide why the run ended
        logging.warning("could not write the last TensorBoard events (%s)", type(error).__name__)
