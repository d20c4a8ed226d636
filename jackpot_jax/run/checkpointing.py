"""Orbax checkpoints of the search state, with the metadata a resume needs.

A checkpoint may also hold the `selected` item: what a stage keeps of its best-evaluated
state (the jackpot held-out selection picks). It is written in the same checkpoint as the
state and the metadata naming its step, so the three always agree after a resume.

Orbax writes each step into a temporary directory and renames it when complete, so a
checkpoint interrupted mid-save is never listed; the process that saves next removes
such leftovers with a warning. A listed checkpoint that still fails to restore is
skipped with a warning and the previous one is used. A save that cannot fit on the disk
is refused before it starts, as an OSError(ENOSPC).
"""

from __future__ import annotations

import contextlib
import errno
import logging
import os
import shutil
import time
from pathlib import Path
from typing import Any

import jax
import numpy as np
import orbax.checkpoint as ocp
import tensorstore as ts
from jax.experimental import multihost_utils

from jackpot_jax import errors, fileio

STATE, META, SELECTED = "state", "meta", "selected"
# Orbax's marker in the name of a step directory whose save has not finished.
TMP_MARKER = ".orbax-checkpoint-tmp"


# Orbax writes a replicated array in parallel from every replica, one slice each; each
# slice is an eager program compiled once per shape, and a search state holds several
# small arrays per layer (scores, masks, momentum, BN statistics): at a fresh process's
# first save of a ResNet-8 replicated on 8 devices, ~120 slice programs took ~2 s against
# milliseconds of writing. An array whose slices would be smaller than this is written
# by one replica; larger ones are still split.
MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL = 1 << 20


def _write_small_arrays_from_one_replica() -> None:
  """Registers Orbax's array handler as it is by default (its metadata store included),
  with `MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL`. An Orbax without that store where this
  looks for it keeps its default handler."""
  try:
    from orbax.checkpoint._src.metadata import array_metadata_store  # pylint: disable=import-outside-toplevel
  except ImportError:
    return
  handler = ocp.type_handlers.ArrayHandler(
      array_metadata_store=array_metadata_store.Store(),
      min_slice_bytes_for_replica_parallel=MIN_SLICE_BYTES_FOR_REPLICA_PARALLEL)
  absl = logging.getLogger("absl")  # Orbax logs a warning for every override
  level = absl.level
  absl.setLevel(logging.ERROR)
  try:
    ocp.type_handlers.register_type_handler(jax.Array, handler, override=True)
  finally:
    absl.setLevel(level)


_write_small_arrays_from_one_replica()


def _directory_size(path: Path) -> int:
  return sum(os.path.getsize(os.path.join(root, name))
             for root, _, names in os.walk(path) for name in names)


@contextlib.contextmanager
def _disk_full_as_oserror(directory: fileio.AnyPath):
  """Orbax reports a full disk as TensorStore's ValueError; callers expect ENOSPC."""
  try:
    yield
  except ValueError as error:
    if "No space left on device" not in str(error):
      raise
    raise OSError(errno.ENOSPC, "No space left on device", str(directory)) from error


def _unreadable_arrays(state_directory: fileio.AnyPath) -> str | None:
  """Why the array store of one checkpoint cannot be read in full, or None if it can.

  Every key of the OCDBT database Orbax writes (array metadata and chunks) is read once,
  blocking, with TensorStore. Orbax's own restore runs its reads as asyncio tasks in an
  event loop it closes as soon as one read fails; the reads still in flight then complete
  into that closed loop from TensorStore's threads ("Event loop is closed" in a thread
  nobody waits for). Reading first keeps a damaged checkpoint away from that path.
  """
  try:
    base = (f"{state_directory}/" if fileio.is_cloud(state_directory)
            else f"file://{state_directory.absolute()}/")
    store = ts.KvStore.open({"driver": "ocdbt", "base": base}).result()
    for key in store.list().result():
      store.read(key).result()
  except Exception as error:  # any failure means: not restorable, say why in one line
    return errors.one_line(error, 200)
  return None


class SearchCheckpoints:
  """Keeps the last `keep` checkpoints of one phase ("search" or "tune") in a workdir."""

  def __init__(self, directory: str | os.PathLike, keep: int, *, writer: bool = False):
    """Opens (and creates) the checkpoint directory.

    Args:
      writer: this process saves here (search, tuning). Only a writer removes the
        leftovers of interrupted saves and moves unreadable checkpoints aside: a reader
        (evaluate, export) may look at a workdir whose run is still saving.
    """
    self.directory = fileio.as_path(directory, "checkpoint directory")
    if not fileio.is_cloud(self.directory):
      self.directory = self.directory.absolute()
    self.writer = writer
    if writer and jax.process_index() == 0 and self.directory.is_dir():
      unfinished = sorted(p.name for p in self.directory.iterdir() if TMP_MARKER in p.name)
      if unfinished:
        logging.warning("removing %d unfinished checkpoint(s) left by an interrupted save: %s",
                        len(unfinished), ", ".join(unfinished))
    options = ocp.CheckpointManagerOptions(max_to_keep=keep, create=writer,
                                           cleanup_tmp_directories=writer)
    self.manager = ocp.CheckpointManager(self.directory, options=options,
                                         item_names=(STATE, META, SELECTED))
    self._checkpoint_bytes = None

  def latest_step(self) -> int | None:
    return self.manager.latest_step()

  def save(self, step: int, state: Any, meta: dict, selected: Any = None) -> None:
    """Starts an asynchronous save of `step`, once the previous one has finished;
    `selected` (None: none) is saved beside the state."""
    items = {STATE: ocp.args.StandardSave(state), META: ocp.args.JsonSave(meta)}
    if selected is not None:
      items[SELECTED] = ocp.args.StandardSave(selected)
    with _disk_full_as_oserror(self.directory):
      # Orbax waits for the previous save at the start of save() anyway; waiting first
      # lets the free space be measured after it.
      self.manager.wait_until_finished()
      self._check_space((state, selected))
      self.manager.save(step, args=ocp.args.Composite(**items), force=True)

  def _check_space(self, state: Any) -> None:
    """Raises OSError(ENOSPC) when the disk cannot hold one more checkpoint; a bucket has
    no free space to measure, so saves into one are not checked.

    Failing here, before Orbax starts writing, leaves no partial checkpoint behind and
    no error traceback from Orbax's background threads. The size is that of a complete
    checkpoint on disk, or before the first one the state's size in memory.
    """
    if fileio.is_cloud(self.directory):
      return
    if self._checkpoint_bytes is None:
      latest = self.manager.latest_step()
      if latest is not None and (self.directory / str(latest)).is_dir():
        self._checkpoint_bytes = _directory_size(self.directory / str(latest))
    needed = self._checkpoint_bytes
    if needed is None:
      needed = sum(leaf.nbytes for leaf in jax.tree.leaves(state))
    free = shutil.disk_usage(self.directory).free
    fits = free >= needed
    if jax.process_count() > 1:
      # Orbax's save is collective: every process must refuse it, or none.
      fits = bool(np.all(multihost_utils.process_allgather(np.asarray(fits))))
    if not fits:
      raise OSError(errno.ENOSPC, f"a checkpoint needs {needed} bytes, {free} are free",
                    str(self.directory))

  def restore_latest(self, abstract_state: Any,
                     abstract_selected: Any = None) -> tuple[Any, dict, Any] | None:
    """Newest checkpoint that restores, as (state, meta, selected); None when there is none.

    `selected` is restored onto `abstract_selected` when that is given and the checkpoint
    holds the item (checkpoints of runs that select nothing, or written before selection
    existed, do not); otherwise it is None. A checkpoint whose meta names a selection
    (meta["selected"]) without the item is damaged like an unreadable one.

    Raises:
      ValueError: checkpoints exist but none restores; starting afresh would hide that.
    """
    skipped = []
    for step in sorted(self.manager.all_steps(), reverse=True):
      items = {STATE: ocp.args.StandardRestore(abstract_state), META: ocp.args.JsonRestore()}
      if abstract_selected is not None and (self.directory / str(step) / SELECTED).exists():
        items[SELECTED] = ocp.args.StandardRestore(abstract_selected)
      damage = next(filter(None, (_unreadable_arrays(self.directory / str(step) / item)
                                  for item in (STATE, SELECTED) if item in items)), None)
      if damage is not None:
        logging.warning("skipping unreadable checkpoint at step %d (%s); trying the previous "
                        "one", step, damage)
        skipped.append((step, damage))
        continue
      try:
        restored = self.manager.restore(step, args=ocp.args.Composite(**items))
        if (abstract_selected is not None and SELECTED not in items
            and restored[META].get("selected") is not None):
          raise ValueError(f"its metadata names a selected step but its {SELECTED}/ is missing")
      except Exception as error:  # a damaged checkpoint must not stop the resume
        damage = errors.one_line(error, 200)
        logging.warning("skipping unreadable checkpoint at step %d (%s); trying the previous "
                        "one", step, damage)
        skipped.append((step, damage))
        continue
      self._set_aside([s for s, _ in skipped])
      return restored[STATE], restored[META], restored[SELECTED] if SELECTED in items else None
    if skipped:
      step, damage = skipped[0]
      raise ValueError(f"no checkpoint in {self.directory} can be read (step {step}: "
                       f"{damage}); move that directory away to start afresh")
    return None

  def _set_aside(self, steps: list[int]) -> None:
    """Moves unreadable checkpoints out of the way of the resumed run's saves.

    The resumed run saves those steps again, which Orbax refuses while the old directory
    is listed; moving rather than deleting keeps them for inspection.
    """
    if not steps or not self.writer:
      return
    if jax.process_index() == 0:
      aside = self.directory.with_name(self.directory.name + "_unreadable")
      aside.mkdir(exist_ok=True)
      for step in steps:
        target = aside / f"{step}-{time.strftime('%Y%m%d-%H%M%S')}"
        (self.directory / str(step)).rename(target)
        logging.warning("moved unreadable checkpoint of step %d to %s", step, target)
    if jax.process_count() > 1:
      ocp.multihost.sync_global_processes(f"jackpot_set_aside_{'_'.join(map(str, steps))}")
    self.manager.reload()

  def wait(self) -> None:
    with _disk_full_as_oserror(self.directory):
      self.manager.wait_until_finished()

  def close(self) -> None:
    try:
      self.wait()
    except BaseException:
      self._close_after_failed_save()
      raise
    self.manager.close()

  def _close_after_failed_save(self) -> None:
    """Closes what Orbax's own close() leaves open after a failed save.

    Orbax's close() starts by waiting for the last save and, when that wait raises (the
    save failed: a full disk), closes nothing else; its metadata-store threads would
    outlive the run. Each part is closed here on its own, whatever the others do.
    """
    for part in ("_checkpointer", "_non_blocking_metadata_store", "_blocking_metadata_store",
                 "_checkpoint_deleter"):
      closer = getattr(getattr(self.manager, part, None), "close", None)
      if closer is not None:
        with contextlib.suppress(Exception):
          closer()

  def __enter__(self) -> "SearchCheckpoints":
    return self

  def __exit__(self, *exc_info) -> None:
    self.close()
