"""Two jax.distributed processes on localhost (CPU collectives) match one process."""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np

from jackpot_jax.run import job

from conftest import CHILD_XLA_FLAGS, final_search_state, tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _free_port() -> int:
  with socket.socket() as s:
    s.bind(("localhost", 0))
    return s.getsockname()[1]


def test_two_process_run_matches_single_process(tiny_job, tmp_path):
  config = tiny_config(tiny_job)
  config.mesh.num_devices = 1
  job.search_and_evaluate(config, tmp_path / "single")

  workdir, port = tmp_path / "two", _free_port()
  overrides = tiny_overrides(tiny_job)  # the flags that compute what tiny_config does
  # Both processes read and write the test session's compilation cache: each entry is
  # written whole (through a rename), so neither reads the other's half-written program.
  env = dict(os.environ, XLA_FLAGS=CHILD_XLA_FLAGS, TF_CPP_MIN_LOG_LEVEL="3")
  processes = [subprocess.Popen(
      [sys.executable, "-m", "jackpot_jax", "search", "--config=configs/default.py",
       f"--workdir={workdir}", f"--coordinator_address=localhost:{port}", "--num_processes=2",
       f"--process_id={index}", *overrides],
      cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
      for index in range(2)]
  outputs = [p.communicate(timeout=600) for p in processes]
  for process, (_, stderr) in zip(processes, outputs):
    assert process.returncode == 0, stderr[-3000:]
  assert (workdir / "report.json").exists()

  single = final_search_state(config, tmp_path / "single")
  two = final_search_state(config, workdir)
  assert int(single.step) == int(two.step) == 6
  for a, b in zip(jax.tree.leaves(single.scores), jax.tree.leaves(two.scores), strict=True):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5)
