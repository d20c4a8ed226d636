"""The experiment scripts run end to end on tiny data and write what they promise."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np

from conftest import CHILD_XLA_FLAGS, tiny_overrides

REPO = Path(__file__).resolve().parents[2]


def _script(name: str, *args: str) -> subprocess.CompletedProcess:
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=CHILD_XLA_FLAGS)
  return subprocess.run([sys.executable, str(REPO / "experiments" / name), *args], cwd=REPO,
                        env=env, capture_output=True, text=True, timeout=600)


def _sets(job: Path) -> list[str]:
  """tiny_overrides: the scripts take --config.a.b=value flags as the CLI does."""
  return tiny_overrides(job)


def test_sweep_then_overlap_write_tables_and_plots(tiny_job, tmp_path):
  sweep = _script("sparsity_sweep.py", f"--output={tmp_path / 'sweep'}", "--sparsities=0.5,0.9",
                  "--epochs=0.5", *_sets(tiny_job))
  assert sweep.returncode == 0, sweep.stderr[-2000:]
  rows = json.loads((tmp_path / "sweep" / "sweep.json").read_text())["rows"]
  assert [round(r["conv_sparsity"], 2) for r in rows] == [0.5, 0.9]
  assert all(0.0 <= r["magnitude_recalibrated"] <= 1.0 for r in rows)
  # Half an epoch of 4 steps: the start and step 2 are evaluated; the jackpot is one of them.
  assert all(r["selected_step"] in (0, 2) and r["steps"] == 2 for r in rows)
  table = (tmp_path / "sweep" / "sweep.md").read_text()
  assert "| search steps | jackpot's step |" in table
  for r in rows:
    assert f"| {r['steps']} | {'0 (start)' if r['selected_step'] == 0 else '2'} |" in table
  assert (tmp_path / "sweep" / "sweep.png").stat().st_size > 0
  overlap = _script("mask_overlap.py", f"--workdir={tmp_path / 'sweep' / 'sparsity_0.9'}",
                    f"--output={tmp_path / 'overlap'}", "--batches=1")
  assert overlap.returncode == 0, overlap.stderr[-2000:]
  result = json.loads((tmp_path / "overlap" / "overlap.json").read_text())
  assert set(result["overall"]) == {"magnitude", "random", "snip", "grasp", "synflow", "wanda"}
  assert all(0.0 <= v <= 1.0 for v in result["overall"].values())
  assert (tmp_path / "overlap" / "overlap.png").stat().st_size > 0


def test_search_cost_gives_each_random_init_the_claimed_multiple_of_the_budget(tiny_job,
                                                                                tmp_path):
  result = _script("search_cost.py", f"--output={tmp_path}", "--sparsities=0.9",
                   "--budgets=0.5,1", "--claim=3", "--eval_every_epochs=0.5",
                   "--tolerance=1.0", *_sets(tiny_job))
  assert result.returncode == 0, result.stderr[-2000:]
  row = json.loads((tmp_path / "cost.json").read_text())["rows"][0]
  assert row["magnitude"]["budget_epochs"] == 0.5 and row["magnitude"]["reached"]
  assert set(row["random_inits"]) == {"kaiming", "edge_popup"}
  for run in row["random_inits"].values():
    assert run["budget_epochs"] == 1.5
    assert run["ratio"] == run["steps"] / row["magnitude"]["steps"]
    assert 0.0 <= run["holdout"] <= 1.0 and 0.0 <= run["final"] <= 1.0
  table = (tmp_path / "cost.md").read_text()
  assert "| 0.90 |" in table and "edge_popup init" in table


def test_experiment_bad_input_is_one_line_with_exit_status_2(tmp_path):
  result = _script("sparsity_sweep.py", f"--output={tmp_path}", "--config.search.sparsty=0.5")
  assert result.returncode == 2
  assert result.stderr.strip() == (
      "sparsity_sweep.py: error: unknown config field 'search.sparsty' in the overrides of "
      f"{REPO / 'configs' / 'default.py'} (did you mean 'search.sparsity'?)")
  assert not list(tmp_path.iterdir())


def test_nm_patterns_reports_every_baseline_and_the_gap_recovered(tiny_job, tmp_path):
  sets = [f for f in _sets(tiny_job) if not f.startswith("--config.search.sparsity_plan=")]
  result = _script("nm_patterns.py", f"--output={tmp_path}", "--patterns=2:4",
                   "--epochs=0.5", *sets)
  assert result.returncode == 0, result.stderr[-2000:]
  row, = json.loads((tmp_path / "nm.json").read_text())["rows"]
  assert row["pattern"] == "2:4" and row["nm_valid"] is True and row["steps"] == 2
  for key in ("dense", "magnitude", "magnitude_recalibrated", "wanda", "wanda_recalibrated",
              "jackpot"):
    assert 0.0 <= row[key] <= 1.0, key
  gap = row["dense"] - row["magnitude_recalibrated"]
  if gap > 0:
    assert row["gap_recovered"] == (row["jackpot"] - row["magnitude_recalibrated"]) / gap
  assert row["selected_step"] in (0, 2)
  table = (tmp_path / "nm.md").read_text()
  assert "| 2:4 | 0.5 |" in table and "| steps | jackpot's step |" in table
  assert f"| 2 | {'0 (start)' if row['selected_step'] == 0 else '2'} |" in table


def test_dtypes_runs_one_search_per_compute_dtype_and_reports_the_gap(tiny_job, tmp_path):
  result = _script("dtypes.py", f"--output={tmp_path}", "--epochs=0.5", *_sets(tiny_job))
  assert result.returncode == 0, result.stderr[-2000:]
  first, second = json.loads((tmp_path / "dtype.json").read_text())["rows"]
  assert (first["dtype"], second["dtype"]) == ("float32", "bfloat16")
  assert first["steps"] == second["steps"] == 2
  assert first["gap_to_first"] == 0.0
  assert second["gap_to_first"] == second["jackpot"] - first["jackpot"]
  assert "| bfloat16 | 0.5 |" in (tmp_path / "dtype.md").read_text()


def test_time_to_jackpot_runs_each_recipe_on_each_budget_and_reuses_finished_runs(tiny_job,
                                                                                   tmp_path):
  bad = _script("time_to_jackpot.py", f"--output={tmp_path}", "--recipes=reference,adamw",
                *_sets(tiny_job))
  assert bad.returncode == 2 and bad.stderr.strip().startswith(
      "time_to_jackpot.py: error: unknown recipe 'adamw' in --recipes; choose from reference,")
  # Two budgets of two recipes: the ladder, and the overlap between its successive masks.
  args = [f"--output={tmp_path}", "--budgets=0.5,1", "--recipes=reference,ramp",
          *_sets(tiny_job), "--config.eval.recalibration_images=0"]
  result = _script("time_to_jackpot.py", *args)
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads((tmp_path / "results.json").read_text())
  rows = saved["rows"]
  assert [(r["recipe"], r["budget_epochs"], r["steps"]) for r in rows] == [
      ("reference", 0.5, 2), ("reference", 1.0, 4), ("ramp", 0.5, 2), ("ramp", 1.0, 4)]
  for row in rows:
    assert row["images_seen"] == 16 * row["steps"] and row["wall_seconds"] > 0
    assert all(0.0 <= row[k] <= 1.0 for k in ("holdout", "holdout_dense", "test", "dense"))
  ramped = json.loads((tmp_path / "ramp_1ep" / "config.json").read_text())["search"]
  assert (ramped["sparsity_ramp"], ramped["start_sparsity"]) == (0.5, 0.45)
  # The overlap is the share of a run's kept weights the smaller budget's jackpot keeps.
  masks = [np.load(tmp_path / f"reference_{b}ep" / "jackpot_masks.npz") for b in ("0.5", "1")]
  layers = [k for k in masks[0].files if k.startswith("mask_")]
  bits = [np.concatenate([np.unpackbits(m[k]) for k in layers]) for m in masks]
  assert rows[0]["overlap_with_previous"] is None
  assert rows[1]["overlap_with_previous"] == (bits[0] & bits[1]).sum() / bits[1].sum()
  summary = saved["summary"]
  assert summary["reference_1_epoch"]["steps"] == 4
  reference = summary["recipes"]["reference"]
  assert reference["steps_ratio"] == reference["reaches_reference"]["steps"] / 4
  table = (tmp_path / "results.md").read_text()
  assert "| ramp | 1 | 4 | 64 |" in table and "`ramp`: sparsity annealed" in table
  assert f"| {100 * rows[1]['overlap_with_previous']:.1f}% |" in table
  assert rows[0]["holdout_images"] == 16 and "The held-out slice has 16 images" in table
  assert (tmp_path / "results.png").stat().st_size > 0
  again = _script("time_to_jackpot.py", *args)  # every run finished: reused, not re-run
  assert again.returncode == 0, again.stderr[-2000:]
  assert json.loads((tmp_path / "results.json").read_text())["rows"] == rows


def test_lm_jackpots_measures_the_baselines_once_and_tabulates_every_run(tmp_path):
  """Two searches of a tiny decoder (with and without distillation): the second reuses the
  first's baseline measurement, the table has both against SparseGPT's gap, and a rerun
  reuses both reports."""
  # Imported here: tiny_decoders imports transformers, which no other test here needs.
  from tiny_decoders import llm_overrides, write_llama_folders
  from tiny_text import documents
  folders = write_llama_folders(tmp_path / "llm", documents(40, seed=0), documents(5, seed=1))
  sets = [f"--config.{key}={value}" for key, value in llm_overrides(folders, 16, **{
      "search.batch_size": 4, "data.holdout_sequences": 8, "progress_bar": False}).items()]
  args = ("lm_jackpots.py", "--config=configs/llm_tiny.py", f"--output={tmp_path / 'study'}",
          "--budgets=0.1", "--starts=wanda", "--distill=0,0.5", *sets)
  first = _script(*args)
  assert first.returncode == 0, first.stderr[-3000:]
  study = tmp_path / "study"
  runs = json.loads((study / "results.json").read_text())["runs"]
  assert [(r["start"], r["distill_weight"]) for r in runs] == [("wanda", 0.0), ("wanda", 0.5)]
  assert (study / "wanda_kd0_e0.1" / "baselines.json").read_bytes() == (
      study / "wanda_kd0.5_e0.1" / "baselines.json").read_bytes()
  table = (study / "results.md").read_text()
  for run in runs:
    assert (f"| wanda | {run['distill_weight']:g} | 0.1 | {run['steps']} | "
            f"{run['jackpot']:.2f} |") in table
  again = _script(*args)
  assert again.returncode == 0 and json.loads((study / "results.json").read_text())["runs"] == runs
