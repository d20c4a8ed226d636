"""Crashes, damaged checkpoints, NaN and atomic outputs (docs/guarantees.md)."""

from __future__ import annotations

import ast
import errno
import json
import logging
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jackpot_jax import errors, fileio
from jackpot_jax.run import (checkpointing, progress, report as report_lib, setup as setup_lib, job,
                             workdir as workdir_lib)
from jackpot_jax.search import steps
from jackpot_jax.pytorch import export_torch

from conftest import CHILD_XLA_FLAGS, final_search_state, setup_of, tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
PACKAGE = REPO / "jackpot_jax"
CONFIG = f"--config={REPO / 'configs' / 'default.py'}"


def _search_command(job: Path, workdir: Path, *extra: str) -> list[str]:
  return [sys.executable, "-m", "jackpot_jax", "search", CONFIG, f"--workdir={workdir}",
          *tiny_overrides(job), *extra]


def _env() -> dict:
  return dict(os.environ, XLA_FLAGS=CHILD_XLA_FLAGS, TF_CPP_MIN_LOG_LEVEL="3")


def _steps_on_disk(directory: Path) -> list[int]:
  """Finalized checkpoint steps; an unfinished save's directory is not a number."""
  try:
    return sorted(int(p.name) for p in directory.iterdir() if p.name.isdigit())
  except FileNotFoundError:
    return []


def _unfinished(directory: Path) -> list[str]:
  try:
    return [p.name for p in directory.iterdir() if checkpointing.TMP_MARKER in p.name]
  except FileNotFoundError:
    return []


def _assert_states_equal(a, b) -> None:
  leaves_a, leaves_b = jax.tree.leaves(a), jax.tree.leaves(b)
  assert len(leaves_a) == len(leaves_b)
  for x, y in zip(leaves_a, leaves_b):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def _wait_for(condition, process: subprocess.Popen, what: str, timeout: float = 180.0) -> None:
  deadline = time.monotonic() + timeout
  while not condition():
    assert process.poll() is None, f"the search exited ({process.returncode}) before {what}"
    assert time.monotonic() < deadline, f"timed out waiting for {what}"
    time.sleep(0.002)


def test_five_kills_mid_step_and_mid_save_end_bitwise_equal_to_an_uninterrupted_run(
    tiny_job, tmp_path):
  """SIGKILL five times: even kills at a seeded-random moment after a save completed
  (mostly inside a step), odd ones as soon as a save is under way (inside the save).

  The uninterrupted run is the same command, saving less often (this test process
  simulates 8 CPU devices, whose XLA programs round differently from a 1-device
  process), run first; the killed
  runs then find its programs in the session's compilation cache (whose entries are
  written whole, so a kill cannot leave part of one behind).
  """
  # 32 steps, a checkpoint after each: kills land in steps, saves and evaluations. The
  # uninterrupted run saves only every 16 steps: when it saves changes none of its values.
  extra = ("--config.search.num_epochs=8", "--config.checkpoint.every_steps=1")
  env = _env()
  straight = subprocess.run(
      _search_command(tiny_job, tmp_path / "straight", *extra,
                      "--config.checkpoint.every_steps=16"),
      cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
  assert straight.returncode == 0, straight.stderr[-3000:]
  workdir = tmp_path / "killed"
  checkpoints = workdir / "checkpoints"
  command = _search_command(tiny_job, workdir, *extra)
  rng = random.Random(0)
  interrupted_saves, logs = 0, []
  for kill in range(5):
    log = tmp_path / f"run{kill}.log"
    with open(log, "w") as stderr:
      process = subprocess.Popen(command, cwd=REPO, env=env,
                                 stdout=subprocess.DEVNULL, stderr=stderr)
    try:
      resumed_from = max(_steps_on_disk(checkpoints), default=0)
      _wait_for(lambda: max(_steps_on_disk(checkpoints), default=0) > resumed_from, process,
                "a new checkpoint")
      if kill % 2:
        _wait_for(lambda: _unfinished(checkpoints), process, "a save under way")
      else:
        time.sleep(rng.uniform(0.0, 0.5))
      process.send_signal(signal.SIGKILL)
    finally:
      process.kill()
      process.wait()
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    interrupted_saves += bool(_unfinished(checkpoints))
    logs.append(log)
  assert max(_steps_on_disk(checkpoints)) < 32, "the run ended before the fifth kill"
  assert interrupted_saves >= 1, "no kill landed inside a save"

  final = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert final.returncode == 0, final.stderr[-3000:]
  assert "Traceback" not in final.stderr
  stderrs = [log.read_text() for log in logs[1:]] + [final.stderr]
  assert any("unfinished checkpoint(s) left by an interrupted save" in s for s in stderrs)
  assert _unfinished(checkpoints) == []
  assert json.loads((workdir / "report.json").read_text())["search"]["steps"] == 32

  config = tiny_config(tiny_job)
  config.search.num_epochs = 8
  _assert_states_equal(final_search_state(config, workdir),
                       final_search_state(config, tmp_path / "straight"))


@pytest.fixture(scope="module")
def finished_run(tiny_job, tmp_path_factory) -> Path:
  """A finished tiny search: checkpoints at steps 2, 4 and 6."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  job.search_and_evaluate(tiny_config(tiny_job), workdir)
  assert _steps_on_disk(workdir / "checkpoints") == [2, 4, 6]
  return workdir


def _truncate_files(directory: Path) -> None:
  for path in directory.rglob("*"):
    if path.is_file():
      os.truncate(path, path.stat().st_size // 2)


def _delete_array_data(directory: Path) -> None:
  for path in (directory / "state").rglob("*"):
    if path.is_file() and path.parent.name == "d":
      path.unlink()


@pytest.mark.parametrize("damage", [_truncate_files, _delete_array_data],
                         ids=["truncated", "deleted"])
def test_damaged_latest_checkpoint_is_skipped_with_a_warning(damage, finished_run, tiny_job,
                                                             tmp_path, caplog):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  checkpoints = workdir / "checkpoints"
  damage(checkpoints / "6")
  # What a kill inside the save of step 8 leaves: a partial temporary directory.
  shutil.copytree(checkpoints / "4", checkpoints / "8.orbax-checkpoint-tmp-1234567890")
  _truncate_files(checkpoints / "8.orbax-checkpoint-tmp-1234567890")

  config = tiny_config(tiny_job)
  setup = setup_of(config)
  abstract = jax.eval_shape(lambda: setup_lib.initial_search_state(setup))
  reader = checkpointing.SearchCheckpoints(checkpoints, 3)
  with caplog.at_level(logging.WARNING):
    state, _, _ = reader.restore_latest(abstract)
  reader.close()
  assert int(state.step) == 4
  assert "skipping unreadable checkpoint at step 6" in caplog.text
  # A reader (evaluate, export) moves and deletes nothing: a run may still be saving.
  assert _steps_on_disk(checkpoints) == [2, 4, 6] and _unfinished(checkpoints)

  caplog.clear()
  with caplog.at_level(logging.WARNING):
    report = job.search_and_evaluate(config, workdir)
  assert "removing 1 unfinished checkpoint(s)" in caplog.text
  assert "skipping unreadable checkpoint at step 6" in caplog.text
  assert report["search"]["steps"] == 6
  assert _steps_on_disk(checkpoints) == [2, 4, 6] and _unfinished(checkpoints) == []
  assert [p.name.split("-")[0] for p in (workdir / "checkpoints_unreadable").iterdir()] == ["6"]
  _assert_states_equal(final_search_state(config, workdir),
                       final_search_state(config, finished_run))


def test_no_readable_checkpoint_is_an_error_not_a_fresh_start(finished_run, tiny_job, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_run, workdir)
  for step in (2, 4, 6):
    _delete_array_data(workdir / "checkpoints" / str(step))
  with pytest.raises(ValueError, match="no checkpoint in .* can be read"):
    job.search_and_evaluate(tiny_config(tiny_job), workdir)
  assert _steps_on_disk(workdir / "checkpoints") == [2, 4, 6]


def test_nan_stops_the_command_naming_the_step_and_keeps_the_last_good_checkpoint(
    tiny_job, tmp_path):
  """A huge learning rate: the scores overflow to Inf, then NaN, a few steps in."""
  workdir = tmp_path / "run"
  result = subprocess.run(
      _search_command(tiny_job, workdir, "--config.search.num_epochs=4",
                      "--config.search.learning_rate=1e8"),
      cwd=REPO, env=_env(), capture_output=True, text=True, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  assert "Traceback" not in result.stderr
  last = result.stderr.strip().splitlines()[-1]
  match = re.fullmatch(r"jackpot: error: NaN or Inf in the scores at step (\d+); stopped there, "
                       r"the last good checkpoint \(step (\d+)\) is kept; .*", last)
  assert match, last
  bad, kept = int(match[1]), int(match[2])
  assert 2 < bad < 16 and kept == (bad - 1) // 2 * 2
  assert _steps_on_disk(workdir / "checkpoints") == list(range(2, kept + 1, 2))
  assert not (workdir / "report.json").exists() and _unfinished(workdir / "checkpoints") == []
  config = tiny_config(tiny_job)
  config.search.num_epochs, config.search.learning_rate = 4, 1e8
  state = final_search_state(config, workdir)
  assert int(state.step) == kept
  assert all(np.isfinite(leaf).all() for leaf in jax.tree.leaves(state.scores))


def test_nan_is_reported_at_its_own_step_between_logs_and_saves(tiny_job, tmp_path,
                                                                 monkeypatch):
  search_step = steps.search_step

  def nan_loss_at_step_3(*args, **kwargs):
    state, metrics = search_step(*args, **kwargs)
    return state, dict(metrics, loss=jnp.where(state.step == 3, jnp.nan, metrics["loss"]))

  monkeypatch.setattr(steps, "search_step", nan_loss_at_step_3)
  config = tiny_config(tiny_job)
  config.log_every_steps = 50  # the host first looks at step 4, to save it
  with pytest.raises(errors.NonFiniteError,
                     match=r"NaN or Inf in the loss at step 3; .*\(step 2\) is kept"):
    job.search_and_evaluate(config, tmp_path)
  assert _steps_on_disk(tmp_path / "checkpoints") == [2]


def _fail_renames(monkeypatch) -> None:
  """Every atomic write fails at its last moment, as a crash before the rename would."""

  def no_rename(src, dst):
    raise OSError(errno.ENOSPC, "No space left on device", str(dst))

  monkeypatch.setattr(fileio.os, "replace", no_rename)


def _assert_untouched(directory: Path, before: dict[str, bytes]) -> None:
  """Same files with the same bytes: nothing new, nothing truncated, no temporary file."""
  assert {p.name: p.read_bytes() for p in directory.iterdir()} == before


def test_failed_writes_leave_old_outputs_whole_and_no_temporary_file(finished_run, tiny_job,
                                                                     tmp_path, monkeypatch):
  directory = tmp_path / "out"
  directory.mkdir()
  for name in ("report.json", "report.md", workdir_lib.CONFIG_FILE):
    (directory / name).write_text(f"the previous {name}\n")
  report = json.loads((finished_run / "report.json").read_text())
  config = tiny_config(tiny_job)
  setup = setup_of(config)
  state = final_search_state(config, finished_run)
  variables = {"params": jax.device_get(setup.params), "batch_stats": state.batch_stats}
  before = {p.name: p.read_bytes() for p in directory.iterdir()}

  _fail_renames(monkeypatch)
  writers = {
      "reports": lambda: report_lib.write_reports(directory, report),
      "config": lambda: workdir_lib.save_workdir_config(config, directory),
      "state_dict": lambda: export_torch(setup.imported, variables, state.masks,
                                         directory / "jackpot.pth"),
      "prune": lambda: export_torch(setup.imported, variables, state.masks,
                                    directory / "pruned.pth", format="prune"),
      "safetensors": lambda: export_torch(setup.imported, variables, state.masks,
                                          directory / "jackpot.safetensors"),
      "masks": lambda: export_torch(setup.imported, variables, state.masks,
                                    directory / "masks.npz", format="masks"),
  }
  for name, write in writers.items():
    with pytest.raises(OSError, match="No space left"):
      write()
    _assert_untouched(directory, before)


# Calls that write a file; outside fileio.py each must sit inside `with atomic_path(...)`.
_WRITE_CALLS = {"save", "savez", "savez_compressed", "write_text", "write_bytes", "dump",
                "save_file", "save_safetensors", "tofile"}


def _writes_outside_atomic_path(tree: ast.AST) -> list[int]:
  def atomic(node: ast.With) -> bool:
    return any(isinstance(item.context_expr, ast.Call) and
               getattr(item.context_expr.func, "id", getattr(item.context_expr.func, "attr", ""))
               in ("atomic_path", "atomic_folder") for item in node.items)

  def visit(node: ast.AST, inside: bool) -> list[int]:
    inside = inside or (isinstance(node, ast.With) and atomic(node))
    found = []
    if isinstance(node, ast.Call) and not inside:
      name = getattr(node.func, "attr", getattr(node.func, "id", ""))
      if getattr(getattr(node.func, "value", None), "id", "") == "fileio":
        name = ""  # fileio's own writers are atomic
      opens_for_write = (name == "open" and any(
          isinstance(a, ast.Constant) and isinstance(a.value, str) and set(a.value) & set("wax")
          for a in node.args[1:2] + [k.value for k in node.keywords if k.arg == "mode"]))
      if name in _WRITE_CALLS or opens_for_write:
        found.append(node.lineno)
    for child in ast.iter_child_nodes(node):
      found += visit(child, inside)
    return found

  return visit(tree, False)


def test_every_writer_in_the_package_goes_through_an_atomic_path():
  """Checkpoints are written by Orbax (rename on completion), TensorBoard events by
  TensorFlow (an append-only log); every other file through fileio.atomic_path."""
  offenders = []
  for path in sorted(PACKAGE.rglob("*.py")):
    if path.name == "fileio.py":
      continue
    relative = path.relative_to(REPO)
    lines = _writes_outside_atomic_path(ast.parse(path.read_text()))
    # SearchCheckpoints.save and the calls of it: Orbax's own atomic rename.
    lines = [n for n in lines if "ckpts.save(" not in path.read_text().splitlines()[n - 1]
             and "self.manager.save(" not in path.read_text().splitlines()[n - 1]]
    offenders += [f"{relative}:{n}" for n in lines]
  assert offenders == []


@pytest.fixture
def tmpfs(tmp_path):
  """Mounts a tmpfs of a given size (a real full disk); skips where mount is not allowed."""
  mounted = []

  def mount(size: str) -> Path:
    point = tmp_path / f"disk{len(mounted)}"
    point.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(point)],
                      capture_output=True).returncode != 0:
      pytest.skip("cannot mount a tmpfs here (needs root)")
    mounted.append(point)
    return point

  yield mount
  for point in mounted:
    if subprocess.run(["umount", str(point)], capture_output=True).returncode != 0:
      subprocess.run(["umount", "--lazy", str(point)], check=True)
      raise AssertionError(f"{point} was still in use after the test: a file left open")


# When a save fails inside Orbax (here forced by bypassing the free-space check that
# normally refuses it first), Orbax's write tasks may complete into the event loop it
# already closed, from TensorStore's threads; how many depends on timing. That is Orbax's
# own leak on its failure path, not ours; the run itself ends with ENOSPC.
@pytest.mark.filterwarnings("ignore::pytest.PytestUnraisableExceptionWarning")
def test_disk_full_inside_an_orbax_save_is_reported_as_enospc(tiny_job, tmpfs, monkeypatch):
  """Without the free-space check (as when another process fills the disk meanwhile),
  Orbax's background save fails; the run still stops with ENOSPC, step 2 intact, and no
  Orbax thread outlives it."""
  monkeypatch.setattr(checkpointing.SearchCheckpoints, "_check_space", lambda self, state: None)
  disk = tmpfs("16m")
  workdir = disk / "run"
  save = checkpointing.SearchCheckpoints.save

  def fill_the_disk_before_step_4(self, step, state, meta, selected=None):
    if step == 4:  # another process takes all but 64 KiB once step 2 is complete
      self.manager.wait_until_finished()
      free = shutil.disk_usage(disk).free
      (disk / "filler").write_bytes(bytes(max(free - 65_536, 0)))
    save(self, step, state, meta, selected)

  monkeypatch.setattr(checkpointing.SearchCheckpoints, "save", fill_the_disk_before_step_4)
  config = tiny_config(tiny_job)
  with pytest.raises(OSError) as raised:
    job.search_and_evaluate(config, workdir)
  assert errors.is_disk_full(raised.value), raised.value
  assert _steps_on_disk(workdir / "checkpoints") == [2]
  assert not (workdir / "report.json").exists()
  assert int(final_search_state(config, workdir).step) == 2


def test_export_to_a_full_disk_is_enospc_and_leaves_no_file(finished_run, tiny_job, tmpfs):
  """torch.save and safetensors report a full disk in their own ways; all become ENOSPC."""
  disk = tmpfs("8k")  # the smallest of the four files, masks.npz, takes about 14 KB
  config = tiny_config(tiny_job)
  setup = setup_of(config)
  state = final_search_state(config, finished_run)
  variables = {"params": jax.device_get(setup.params), "batch_stats": state.batch_stats}
  for name, format in (("jackpot.pth", "state_dict"), ("jackpot.safetensors", "state_dict"),
                       ("pruned.pth", "prune"), ("masks.npz", "masks")):
    with pytest.raises(OSError) as raised:
      export_torch(setup.imported, variables, state.masks, disk / name, format=format)
    assert errors.is_disk_full(raised.value), (name, raised.value)
    assert list(disk.iterdir()) == []


def test_tensorboard_on_a_full_disk_is_enospc(tmpfs):
  """TensorFlow's writer raises its own error type when the disk is full."""
  logger = progress.ProgressLogger(tmpfs("8k"), total=1, start=0, enabled=False)
  with pytest.raises(OSError) as raised:
    for step in range(10_000):
      logger.scalars(step, {"search/loss": 1.0, "search/accuracy": 0.5})
  assert errors.is_disk_full(raised.value), raised.value
  logger.close()  # the lost tail is a warning, not a second error
