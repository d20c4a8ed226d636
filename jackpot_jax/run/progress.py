"""Progress bar and TensorBoard scalars of a training loop, written by process 0 only.

The bar starts under a header line saying what the images go through (channels,
statistics, augmentation) and where each came from. Every step's metrics are summed on
the device (no host sync); at each log step the window's means are written with the
loop's speed (steps/s, images/s), its learning rate and the fraction of wall time the
host spent waiting for input.

Events go through tensorboardX's `RecordWriter` (TFRecord framing of `Event` protos) from
the calling thread. Its `SummaryWriter` writes from a background thread, where a full
disk would become an exception in that thread instead of an error here, and TensorFlow's
writer would load TensorFlow's runtime into the process that runs XLA.
"""

from __future__ import annotations

import importlib
import logging
import socket
import sys
import time
from pathlib import Path
from typing import Any, Callable

import jax
import jax.numpy as jnp

from jackpot_jax import fileio
from jackpot_jax.data import DatasetInfo, resolved_preprocessing
from jackpot_jax.data.text import TextInfo

# The file-version record TensorBoard expects first in every event file.
_FILE_VERSION = "brain.Event:2"

# What the progress bar shows: (label, metric, format).
_SHOWN = (("loss", "loss", "{:.3f}"), ("acc", "accuracy", "{:.3f}"),
          ("flips", "mask_flips", "{:.0f}"), ("img/s", "images_per_second", "{:.0f}"),
          ("seq/s", "sequences_per_second", "{:.0f}"),
          ("wait", "input_wait_fraction", "{:.2f}"))

_add = jax.jit(lambda total, metrics: jax.tree.map(jnp.add, total, metrics))


def data_header(info: DatasetInfo | TextInfo) -> str:
  """The header line: the dataset, its batches' image shape and their preprocessing (text:
  its sequences)."""
  if isinstance(info, TextInfo):
    return (f"data {info.name}: {info.num_train:,} searched sequences of {info.seq_len} "
            f"tokens ({info.num_holdout:,} held out)")
  height, width, channels = info.image_shape
  line = f"data {info.name}: {height}x{width}x{channels} images"
  if info.preprocessing is None:
    return line
  return f"{line}; {resolved_preprocessing.summary(info.preprocessing.as_dict())}"


def _import_tensorboardx() -> None:
  """Imports tensorboardX without torch: its package tries `import torch` for writers
  this module does not use (it takes numbers), which would cost a search process 1.5 s.
  A None entry in sys.modules makes that try find torch absent; a process that has torch
  already keeps it."""
  if "tensorboardX" in sys.modules or "torch" in sys.modules:
    return
  sys.modules["torch"] = None
  try:
    importlib.import_module("tensorboardX")
  finally:
    del sys.modules["torch"]


class ProgressLogger:
  """Progress bar and TensorBoard scalars of one loop ("search" or "tune")."""

  def __init__(self, workdir: Path, total: int, start: int, enabled: bool, *,
               phase: str = "search", batch_size: int = 0,
               learning_rate: Callable[[int], Any] | None = None, header: str = "",
               examples: str = "images"):
    """
    Args:
      phase: tag prefix and progress-bar label.
      batch_size: global batch, for images/s (sequences/s).
      learning_rate: the optimizer's schedule, step -> rate.
      header: a line written above the progress bar (`data_header`).
      examples: what a batch holds, "images" or "sequences": the speed's name.
    """
    self.is_writer = jax.process_index() == 0
    self.directory = workdir / "tensorboard"
    self.phase, self.batch_size = phase, batch_size
    # Jitted: an optax schedule run op by op compiles (or loads) a program per operation.
    self.learning_rate = None if learning_rate is None else jax.jit(learning_rate)
    self.speed_key = f"{examples}_per_second"
    self.bar = None
    self.writer = None
    self._window_sums, self._window_steps, self._input_seconds = None, 0, 0.0
    self._window_began = time.perf_counter()
    if self.is_writer:
      # A gs:// path goes to tensorboardX's Cloud Storage writer, which uploads the whole
      # (small) event file at each flush.
      _import_tensorboardx()
      from tensorboardX.record_writer import RecordWriter
      if not fileio.is_cloud(self.directory):
        self.directory.mkdir(parents=True, exist_ok=True)
      name = f"events.out.tfevents.{int(time.time())}.{socket.gethostname()}"
      self.writer = RecordWriter(str(self.directory / name))
      self._write([{"file_version": _FILE_VERSION}])
      if enabled:
        import tqdm
        if header:
          print(header, file=sys.stderr, flush=True)
        self.bar = tqdm.tqdm(total=total, initial=start, desc=phase, unit="step",
                             dynamic_ncols=True)

  def record(self, metrics: dict, input_seconds: float = 0.0) -> None:
    """Adds one step's metrics (device arrays, not synced) and its wait for input."""
    self._window_sums = metrics if self._window_sums is None else _add(self._window_sums,
                                                                         metrics)
    self._window_steps += 1
    self._input_seconds += input_seconds

  def step(self, step: int, advanced: int) -> None:
    """Writes the window's metric means, speed and learning rate at `step` and advances the
    progress bar by `advanced` steps."""
    wall = max(time.perf_counter() - self._window_began, 1e-9)
    values = {}
    if self._window_steps:
      values = {key: float(value) / self._window_steps
                for key, value in jax.device_get(self._window_sums).items()}
      values.update({"steps_per_second": self._window_steps / wall,
                     self.speed_key: self._window_steps * self.batch_size / wall,
                     "input_wait_fraction": min(self._input_seconds / wall, 1.0)})
    if self.learning_rate is not None:
      values["learning_rate"] = float(self.learning_rate(step))
    self._window_sums, self._window_steps, self._input_seconds = None, 0, 0.0
    self._window_began = time.perf_counter()
    if self.bar is not None:
      self.bar.update(advanced)
      self.bar.set_postfix({label: fmt.format(values[key]) for label, key, fmt in _SHOWN
                            if key in values})
    self.scalars(step, {f"{self.phase}/{key}": value for key, value in values.items()})

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
