"""benchmarks/gpu_suite.sh runs end to end before any GPU is lent (--smoke: tiny sizes on the
CPU), and its table holds the images/s of the runs it collects and the ratios between them."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

from conftest import CHILD_XLA_FLAGS

REPO = Path(__file__).resolve().parents[2]
SUITE = REPO / "benchmarks" / "gpu_suite.sh"
TABLE = REPO / "benchmarks" / "gpu_suite_table.py"
ROWS = ["jax search f32", "jax dense f32", "jax search bf16", "jax dense bf16",
        "torch reference search f32", "torch dense f32"]


def _step_speed(dtype: str, images_per_s: dict) -> dict:
  """step_speed.py's JSON for ResNet-50 at batch 256 with the given images/s."""
  return {"model": "resnet50", "batch_size": 256, "input": [224, 224, 3], "dtype": dtype,
          "jax_backend": "gpu", "machine": "x86_64, 16 cores",
          "step_ms": {k: round(256e3 / v, 2) for k, v in images_per_s.items()},
          "images_per_s": images_per_s}


def _collect(tmp_path: Path, runs: dict, *extra: str) -> subprocess.CompletedProcess:
  """Writes each run's stdout (a log line, then its JSON) and runs `collect` on them."""
  args = []
  for name, result in runs.items():
    path = tmp_path / f"{name}.out"
    path.write_text("compiling...\n" + (result if isinstance(result, str) else json.dumps(result))
                    + "\n")
    args.append(f"--run={name}={path}")
  devices = tmp_path / "devices.json"
  devices.write_text(json.dumps({"jax": "gpu: NVIDIA H200", "torch": "NVIDIA H200"}))
  return subprocess.run([sys.executable, str(TABLE), "collect", f"--out={tmp_path / 's.json'}",
                         f"--devices={devices}", *args, *extra],
                        capture_output=True, text=True, timeout=60)


def test_the_table_holds_each_rows_images_per_s_and_the_ratios_between_them(tmp_path):
  runs = {"f32": _step_speed("float32", {"jax_search": 800.0, "jax_dense": 1000.0,
                                         "torch_search": 100.0, "torch_dense": 500.0}),
          "bf16": _step_speed("bfloat16", {"jax_search": 1900.0, "jax_dense": 2000.0}),
          "mask_selection": {"backend": "gpu", "chosen": "top_k", "exact_methods_agree": True,
                             "methods": {"top_k": {"ms": 1.5, "fraction_of_dense_step": 0.006,
                                                   "exact": True}}}}
  done = _collect(tmp_path, runs)
  assert done.returncode == 0, done.stderr
  table = done.stdout
  for name, value in zip(ROWS, [800.0, 1000.0, 1900.0, 2000.0, 100.0, 500.0]):
    assert f"| {name} | {value:.1f} |" in table
  # Search/dense is dense images/s over search images/s (a step-time ratio).
  assert "| search/dense step time, jax f32 | 1.250 |" in table
  assert "| search/dense step time, jax bf16 | 1.053 |" in table
  assert "| search/dense step time, torch f32 | 5.000 |" in table
  assert "| jackpot_jax/PyTorch images/s, search f32 | 8.000 |" in table
  assert "| jackpot_jax/PyTorch images/s, dense f32 | 2.000 |" in table
  assert "| top_k | 1.50 | 0.0060 | yes |" in table
  assert "resnet50, batch 256, 224x224" in table and "NVIDIA H200" in table
  suite = json.loads((tmp_path / "s.json").read_text())
  assert suite["ratios"] == {"jax_search_over_dense_f32": 1.25,
                             "jax_search_over_dense_bf16": 1.0526,
                             "torch_search_over_dense_f32": 5.0,
                             "jax_over_torch_search_images_per_s_f32": 8.0,
                             "jax_over_torch_dense_images_per_s_f32": 2.0}
  assert suite["failed"] == {} and suite["runs"] == runs
  assert (tmp_path / "s.md").read_text() == table


def test_failed_runs_are_named_in_one_line_and_the_rest_still_tabled(tmp_path):
  runs = {"f32": _step_speed("float32", {"jax_search": 800.0, "jax_dense": 1000.0}),
          "bf16": "Traceback (most recent call last): ...", "mask_selection": "{}"}
  done = _collect(tmp_path, runs, "--failed=mask_selection=timed out after 70 s")
  assert done.returncode == 2
  assert done.stderr.strip().splitlines() == [
      "gpu_suite: failed: step_speed float32 (with PyTorch) (printed no positive images_per_s "
      "for torch_search); step_speed bfloat16 (printed no JSON on its last line); "
      "mask_selection (timed out after 70 s)"]
  assert "| jax search f32 | 800.0 |" in done.stdout
  assert "| jax search bf16 | n/a |" in done.stdout
  assert "| search/dense step time, jax f32 | 1.250 |" in done.stdout
  bad_flag = subprocess.run(["bash", str(SUITE), "--gpu"], capture_output=True, text=True,
                            timeout=60)
  assert bad_flag.returncode == 2 and "unknown argument '--gpu'" in bad_flag.stderr


def test_smoke_suite_runs_every_benchmark_and_prints_the_table(tmp_path):
  env = dict(os.environ, PYTHON=sys.executable, XLA_FLAGS=CHILD_XLA_FLAGS, TF_CPP_MIN_LOG_LEVEL="3")
  env.pop("OUT", None)
  done = subprocess.run(["bash", str(SUITE), "--smoke", f"--out={tmp_path}"], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=1500)
  assert done.returncode == 0, done.stderr[-3000:]
  suite = json.loads((tmp_path / "gpu_suite.json").read_text())
  assert suite["smoke"] and suite["failed"] == {}
  assert [row["name"] for row in suite["rows"]] == ROWS
  assert all(row["images_per_s"] > 0 for row in suite["rows"])
  assert all(value > 0 for value in suite["ratios"].values())
  assert suite["runs"]["f32"]["dtype"] == "float32"
  assert suite["runs"]["bf16"]["dtype"] == "bfloat16"
  assert suite["mask_selection"]["methods"]
  for row in suite["rows"]:
    assert f"| {row['name']} | {row['images_per_s']:.1f} |" in done.stdout
  assert "| jackpot_jax/PyTorch images/s, search f32 |" in done.stdout
  assert (tmp_path / "gpu_suite.md").read_text() == done.stdout
  assert (tmp_path / "gpu_suite.log").stat().st_size > 0
