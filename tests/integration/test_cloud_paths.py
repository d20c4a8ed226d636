"""gs:// paths end to end, against an in-memory Cloud Storage emulator on 127.0.0.1.

The commands run as subprocesses whose gcsfs, epath, TensorStore, Orbax and tensorboardX
clients are routed to the emulator (`gcs_emulator.py`); this process reads the bucket
over plain HTTP.
"""

from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
from PIL import Image
import pytest
import torch

from conftest import CHILD_XLA_FLAGS, TINY_CHECKPOINT, tiny_overrides
from gcs_emulator import closed_port_env, running_emulator
from test_bad_inputs import CONFIG, REPO, assert_one_line_error

# Long enough that a kill after the first checkpoint lands mid-run: 12 steps, 6 saves (a
# save to the bucket takes longer than the poll that sees the first one and the kill).
LONG_SEARCH = ["--config.search.num_epochs=3", "--config.checkpoint.every_steps=2"]


def _command(args: list[str]) -> list[str]:
  return [sys.executable, "-m", "jackpot_jax", *args]


def _run(args: list[str], env: dict, cwd: Path, timeout: int = 300) -> subprocess.CompletedProcess:
  return subprocess.run(_command(args), env=env, cwd=cwd, capture_output=True, text=True,
                        timeout=timeout)


def _child_env(gcs_env: dict) -> dict:
  return {**os.environ, **gcs_env, "TF_CPP_MIN_LOG_LEVEL": "3", "XLA_FLAGS": CHILD_XLA_FLAGS}


def _search_flags(job: Path, checkpoint: str) -> list[str]:
  return ["search", CONFIG, "--workdir=gs://bucket/run", *tiny_overrides(job), *LONG_SEARCH,
          f"--config.model.checkpoint={checkpoint}"]


def _no_local_bucket_folders(*roots: Path) -> None:
  for root in roots:
    found = [str(p) for p in root.rglob("gs:*")]
    assert found == [], found


# Orbax writes a step's commit file last, once the step is complete.
_COMMITTED = r"run/checkpoints/(\d+)/commit_success\.txt"


def _wait_for_object(gcs, pattern: str, process: subprocess.Popen, timeout: float) -> str:
  """The first object name that matches `pattern`, polled while `process` runs."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    hits = [name for name in gcs.names() if re.fullmatch(pattern, name)]
    if hits:
      return hits[0]
    assert process.poll() is None, "the search ended before its first checkpoint"
    time.sleep(0.05)
  raise AssertionError(f"no object matching {pattern} after {timeout} s")


def test_search_kill_resume_evaluate_export_with_a_bucket_workdir(tiny_job, tmp_path):
  with running_emulator("bucket") as gcs:
    env = _child_env(gcs.env())
    gcs.upload(f"pretrained/{TINY_CHECKPOINT}", (tiny_job / TINY_CHECKPOINT).read_bytes())
    search = _search_flags(tiny_job, f"gs://bucket/pretrained/{TINY_CHECKPOINT}")

    log = tmp_path / "killed.log"
    with open(log, "w") as output:
      process = subprocess.Popen(_command(search), env=env,
                                 cwd=tmp_path, stdout=output, stderr=subprocess.STDOUT)
      try:
        _wait_for_object(gcs, _COMMITTED, process, timeout=240)
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
      finally:
        process.kill()
    assert process.returncode == -signal.SIGKILL, log.read_text()[-3000:]
    assert "report.json" not in " ".join(gcs.names())
    # The search may have committed more steps between the poll and the kill.
    step = max(int(found[1]) for name in gcs.names()
               if (found := re.fullmatch(_COMMITTED, name)))
    assert step < 12

    resumed = _run([*search, "--config.profile_steps=5,6", "--verbosity=0"], env, tmp_path)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    assert f"resuming the search from step {step}" in resumed.stderr, resumed.stderr[-3000:]

    evaluated = _run(["evaluate", "--workdir=gs://bucket/run"], env, tmp_path)
    assert evaluated.returncode == 0, evaluated.stderr[-3000:]
    exported = _run(["export", "--workdir=gs://bucket/run",
                     "--output=gs://bucket/export/jackpot.pth"], env, tmp_path)
    assert exported.returncode == 0, exported.stderr[-3000:]

    names = gcs.names()
    report = json.loads(gcs.read("run/report.json"))
    exported_state = torch.load(io.BytesIO(gcs.read("export/jackpot.pth")), weights_only=True)
  for expected in ("run/config.json", "run/report.md", "run/checkpoints/12/commit_success.txt"):
    assert expected in names, names
  assert any(n.startswith("run/tensorboard/events.out.tfevents.") for n in names), names
  assert any(n.startswith("run/profile/") for n in names), names
  assert not any(".jackpot_write_probe" in n for n in names), names
  # The exported kernels are W * M: as many zeros as the search pruned (random W has none).
  zeros = sum(int((v == 0).sum()) for v in exported_state.values() if v.ndim >= 2)
  assert zeros == sum(l["size"] - l["kept"] for l in report["layers"].values()) > 0
  _no_local_bucket_folders(tmp_path, REPO)


def test_an_unreachable_bucket_ends_in_one_line_within_two_minutes(tiny_job, tmp_path):
  with closed_port_env() as gcs_env:
    began = time.monotonic()
    result = _run(_search_flags(tiny_job, str(tiny_job / TINY_CHECKPOINT)), _child_env(gcs_env),
                  tmp_path, timeout=240)
    seconds = time.monotonic() - began
  assert_one_line_error(result.returncode, result.stderr,
                        "--workdir gs://bucket/run cannot be reached (")
  assert seconds < 120, seconds
  assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("flags, expected", [
    (["--workdir=gs://no-such-bucket/run"], "--workdir gs://no-such-bucket/run cannot be reached"),
    (["--workdir=gs://bucket/run", "--config.model.checkpoint=gs://bucket/missing.pth"],
     "checkpoint gs://bucket/missing.pth does not exist"),
], ids=["missing_bucket", "missing_checkpoint"])
def test_a_missing_bucket_or_object_ends_in_one_line(tiny_job, tmp_path, flags, expected):
  with running_emulator("bucket") as gcs:
    result = _run(["search", CONFIG, *tiny_overrides(tiny_job), *flags],
                  _child_env(gcs.env()), tmp_path)
    names = gcs.names()
  assert_one_line_error(result.returncode, result.stderr, expected)
  assert names == []
  assert list(tmp_path.iterdir()) == []


_READ_DATASETS = """
import json, sys
import numpy as np
from jackpot_jax import data
summary = {}
for name in sys.argv[1:]:
  config = data.default_data_config(name)
  config.update(mean=(0.5,) * 3, std=(0.25,) * 3, augment="cifar", holdout_images=2)
  info = data.load_dataset_info(config)
  train = data.make_train_iterator(config, batch_size=4, seed=1, start_step=3)
  batch = next(train)
  train.close()
  evaluation = list(data.make_eval_batches(config, batch_size=4))
  summary[name.split(":")[0]] = {
      "info": [info.class_names, info.image_shape, info.num_train, info.num_test],
      "train": [batch["image"].tolist(), batch["label"].tolist()],
      "eval": [[b["image"].tolist(), b["label"].tolist(), b["mask"].tolist()]
               for b in evaluation]}
print(json.dumps(summary))
"""


def _read_datasets(names: list[str], env: dict, cwd: Path) -> dict:
  result = subprocess.run([sys.executable, "-c", _READ_DATASETS, *names], env=env, cwd=cwd,
                          capture_output=True, text=True, timeout=300)
  assert result.returncode == 0, result.stderr[-2000:]
  return json.loads(result.stdout.splitlines()[-1])


def test_an_image_folder_and_an_npz_file_in_a_bucket_read_as_they_do_on_disk(tmp_path):
  """Listing, class order, decoding and batches of gs:// data equal those of the same
  files on local disk; nothing is written beside the run."""
  rng = np.random.default_rng(0)
  local = tmp_path / "local"
  for split, classes in (("train", {"cat": 4, "dog": 5}), ("val", {"cat": 2, "dog": 1})):
    for name, count in classes.items():
      for index in range(count):
        path = local / "folder" / split / name / ("nested" if index % 2 else ".") / f"{index}.png"
        path.parent.mkdir(parents=True, exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)).save(path)
  np.savez(local / "tiny.npz", x_train=rng.integers(0, 256, (10, 4, 4, 3), dtype=np.uint8),
           y_train=np.arange(10) % 3, x_test=rng.integers(0, 256, (5, 4, 4, 3), dtype=np.uint8),
           y_test=np.arange(5) % 3)
  run_dir = tmp_path / "run"
  run_dir.mkdir()
  with running_emulator("bucket") as gcs:
    for path in sorted(p for p in local.rglob("*") if p.is_file()):
      gcs.upload(f"data/{path.relative_to(local).as_posix()}", path.read_bytes())
    from_bucket = _read_datasets(["image_folder:gs://bucket/data/folder",
                                  "npz:gs://bucket/data/tiny.npz"],
                                 _child_env(gcs.env()), run_dir)
  from_disk = _read_datasets([f"image_folder:{local / 'folder'}", f"npz:{local / 'tiny.npz'}"],
                             _child_env({}), run_dir)
  assert from_bucket == from_disk
  assert from_disk["image_folder"]["info"][:3] == [["cat", "dog"], [6, 5, 3], 7]
  assert list(run_dir.iterdir()) == []
