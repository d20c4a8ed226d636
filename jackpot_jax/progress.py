"""Progress bar and TensorBoard scalars, written by process 0 only.

Events go through tensorboardX's `RecordWriter` (TFRecord framing of `Event` protos) from
the calling thread. Its `SummaryWriter` writes from a background thread, where a full
disk would become an exception in that thread instead of an error here, and TensorFlow's
writer would load TensorFlow's runtime into the process that runs XLA.
"""

from __future__ import annotations

import logging
import socket
import time
from pathlib import Path

import jax

# The file-version record TensorBoard expects first in every event file.
_FILE_VERSION = "brain.Event:2"


class ProgressLogger:
  """Progress bar and TensorBoard scalars on process 0 only."""

  def __init__(self, workdir: Path, total: int, start: int, enabled: bool):
    self.is_writer = jax.process_index() == 0
    self.directory = workdir / "tensorboard"
    self.bar = None
    self.writer = None
    if self.is_writer:
      # Imported here: tensorboardX imports torch, which only process 0 needs for this.
      from tensorboardX.record_writer import RecordWriter
      self.directory.mkdir(parents=True, exist_ok=True)
      name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
      self.writer = RecordWriter(str(self.directory / name))
      self._write([{"file_version": _FILE_VERSION}])
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
    """Appends one scalar event per value and flushes them to disk (a full disk raises
    OSError(ENOSPC) here)."""
    if self.writer is None:
      return
    from tensorboardX import summary
    self._write([{"step": step, "summary": summary.scalar(key, float(value))}
                 for key, value in values.items()])

  def _write(self, events: list[dict]) -> None:
    from tensorboardX.proto import event_pb2
    now = time.time()
    for fields in events:
      self.writer.write(event_pb2.Event(wall_time=now, **fields).SerializeToString())
    self.writer.flush()

  def close(self) -> None:
    if self.bar is not None:
      self.bar.close()
    if self.writer is not None:
      try:  # the file is closed even when its last bytes cannot be written
        self.writer.close()
      except Exception as error:  # losing the last events must not hide why the run ended
        logging.warning("could not write the last TensorBoard events (%s)", type(error).__name__)

  def __enter__(self) -> "ProgressLogger":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
