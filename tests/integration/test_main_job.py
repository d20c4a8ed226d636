"""The main job end to end on tiny synthetic data: resume, overrides, reports, export."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import jax
import numpy as np
import pytest
import torch

from jackpot_jax import cli
from jackpot_jax.run import job, workdir_export
from torch_reference.torch_models import CifarResNet

from conftest import CHILD_XLA_FLAGS, TINY_CHECKPOINT, TINY_DEPTH, TINY_MODEL, final_search_state, tiny_config

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def finished_tiny_run(tiny_job, tmp_path_factory) -> tuple[Path, dict]:
  """(workdir, report) of a finished `tiny_config` search; tests that write into a
  workdir copy it first."""
  workdir = tmp_path_factory.mktemp("finished") / "run"
  return workdir, job.search_and_evaluate(tiny_config(tiny_job), workdir)


def test_resumed_search_ends_bitwise_equal_to_uninterrupted(tiny_job, finished_tiny_run,
                                                             tmp_path):
  config = tiny_config(tiny_job)
  stopped = job.search_and_evaluate(config, tmp_path / "resumed", stop_after=3)
  assert stopped == {"stopped_at": 3}
  job.search_and_evaluate(config, tmp_path / "resumed")
  straight = final_search_state(config, finished_tiny_run[0])
  resumed = final_search_state(config, tmp_path / "resumed")
  assert int(straight.step) == int(resumed.step) == 6
  for a, b in zip(jax.tree.leaves((straight.scores, straight.masks)),
                  jax.tree.leaves((resumed.scores, resumed.masks)), strict=True):
    np.testing.assert_array_equal(a, b)


def test_search_ends_at_the_first_evaluation_within_tolerance_of_dense(tiny_job, tmp_path):
  config = tiny_config(tiny_job)
  config.eval.every_epochs = 0.5  # every 2 steps of 6
  config.eval.stop_within_dense = 1.0  # any accuracy is within 100 points of dense
  report = job.search_and_evaluate(config, tmp_path / "early")
  assert report["search"]["steps"] == 2 and report["search"]["goal_reached_at"] == 2
  assert report["search"]["planned_steps"] == 6
  assert "ended early" in (tmp_path / "early" / "report.md").read_text()
  again = job.search_and_evaluate(config, tmp_path / "early")
  assert again["search"]["steps"] == 2
  assert [h["step"] for h in again["search"]["history"]] == [0, 2]
  config.eval.stop_within_dense = 0.0
  assert job.search_and_evaluate(config, tmp_path / "full")["search"]["steps"] == 6
  early = final_search_state(config, tmp_path / "early")
  stopped = tmp_path / "stopped"
  config.checkpoint.every_steps = 1
  job.search_and_evaluate(config, stopped, stop_after=2)
  for a, b in zip(jax.tree.leaves(early.scores), jax.tree.leaves(final_search_state(config, stopped).scores),
                  strict=True):
    np.testing.assert_array_equal(a, b)


def test_search_evaluates_and_stops_on_the_holdout_and_tests_once_at_the_end(
    tiny_job, tmp_path, monkeypatch):
  from jackpot_jax import data as data_lib  # pylint: disable=import-outside-toplevel
  passes = []
  real = data_lib.make_eval_batches

  def recorded(data_config, split="test", **kwargs):
    passes.append(split)
    return real(data_config, split, **kwargs)

  monkeypatch.setattr(data_lib, "make_eval_batches", recorded)
  config = tiny_config(tiny_job)
  config.eval.every_epochs = 0.5  # every 2 steps of 6
  config.eval.stop_within_dense = 0.0
  report = job.search_and_evaluate(config, tmp_path / "full")
  # Test split: dense, magnitude (stale BN), magnitude recalibrated, and the jackpot once.
  assert passes.count("test") == 4
  # Holdout: dense, then the jackpot at the start (step 0) and at steps 2, 4 and 6.
  history = report["search"]["history"]
  assert passes.count("holdout") == 5 and [h["step"] for h in history] == [0, 2, 4, 6]
  selected = next(h for h in history if h["step"] == report["search"]["selected_step"])
  assert report["holdout"]["jackpot"] == selected["jackpot_accuracy"]
  passes.clear()
  config.eval.stop_within_dense = 1.0  # any accuracy is within 100 points of dense
  early = job.search_and_evaluate(config, tmp_path / "early")
  assert early["search"]["selected_on"] == "holdout" and early["search"]["goal_reached_at"] == 2
  assert passes.count("test") == 4 and passes.count("holdout") == 3


def test_report_has_the_contract_keys(finished_tiny_run):
  workdir, report = finished_tiny_run
  on_disk = json.loads((workdir / "report.json").read_text())
  assert on_disk["model"] == TINY_MODEL and on_disk["checkpoint"].endswith(TINY_CHECKPOINT)
  assert on_disk["dataset"].startswith("npz:") and on_disk["target_sparsity"] == 0.9
  assert set(on_disk["sparsity"]) >= {"conv", "prunable", "all_weights", "per_layer"}
  assert set(on_disk["accuracy"]) >= {"dense", "magnitude", "magnitude_recalibrated", "jackpot"}
  assert on_disk["accuracy_split"] == "test" and on_disk["search"]["selected_on"] == "holdout"
  assert on_disk["accuracy_images"] == 20
  assert set(on_disk["search"]) >= {"selected_step", "start_holdout_accuracy", "beat_start"}
  assert on_disk["holdout"]["images"] == 16 and on_disk["recalibration_images"] == 64
  assert set(on_disk["search"]) >= {"steps", "epochs", "wall_seconds", "score_init", "sparsity_plan"}
  assert on_disk["search"]["steps"] == 6 and on_disk["search"]["epochs"] == 1.5
  assert abs(on_disk["sparsity"]["conv"] - 0.9) < 0.01
  assert on_disk["sparsity"]["per_layer"]["linear"] == 0.0
  assert on_disk["data"]["image_shape"] == [8, 8, 1]
  used = on_disk["data"]["preprocessing"]
  assert (used["mean"], used["std"], used["statistics"]) == ([0.5], [0.25], "config")
  assert (used["augment"], used["augment_from"]) == ("cifar", "image size 8 px <= 64")
  assert (used["channels"], used["channels_from"]) == (1, "npz arrays")
  for value in on_disk["accuracy"].values():
    assert value is None or 0.0 <= value <= 1.0
  assert report["accuracy"] == on_disk["accuracy"]
  table = (workdir / "report.md").read_text()
  assert "| layer1.0.conv1 |" in table and "jackpot" in table
  assert "- data: 8x8x1 images; channels 1 (npz arrays); mean (0.5000)" in table


def test_workdir_with_other_config_is_refused_unless_forced(tiny_job, finished_tiny_run,
                                                           tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_tiny_run[0], workdir)
  config = tiny_config(tiny_job)
  config.search.num_epochs = 0.25
  with pytest.raises(ValueError, match="different config.*search.num_epochs"):
    job.search_and_evaluate(config, workdir)
  config.search.sparsity = 0.8
  with pytest.raises(ValueError, match="different config.*search.sparsity"):
    job.search_and_evaluate(config, workdir)
  assert job.search_and_evaluate(config, workdir, force=True)["target_sparsity"] == 0.8


def _cli(*args, cwd=REPO):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=CHILD_XLA_FLAGS)
  return subprocess.run([sys.executable, "-m", "jackpot_jax", *args], cwd=cwd, env=env,
                        capture_output=True, text=True, timeout=300)


def test_command_line_search_applies_overrides_and_exports(tiny_job, tmp_path):
  workdir = tmp_path / "run"
  result = _cli("search", "--config=configs/default.py", f"--workdir={workdir}",
                f"--config.model.name={TINY_MODEL}",
                f"--config.model.checkpoint={tiny_job / TINY_CHECKPOINT}",
                f"--config.data.name=npz:{tiny_job / 'data.npz'}",
                "--config.search.sparsity=0.8", "--config.search.num_epochs=0.5",
                "--config.search.sparsity_plan=uniform",
                "--config.search.batch_size=16", "--config.eval.batch_size=10",
                "--config.progress_bar=False")
  assert result.returncode == 0, result.stderr[-2000:]
  saved = json.loads((workdir / "config.json").read_text())
  assert saved["search"]["sparsity"] == 0.8 and saved["search"]["batch_size"] == 16
  report = json.loads((workdir / "report.json").read_text())
  assert report["target_sparsity"] == 0.8 and report["search"]["steps"] == 2
  exported = tmp_path / "jackpot.pth"
  result = _cli("export", f"--workdir={workdir}", f"--output={exported}")
  assert result.returncode == 0, result.stderr[-2000:]
  net = CifarResNet(TINY_DEPTH, num_classes=10, in_channels=1)
  net.load_state_dict(torch.load(exported, weights_only=True), strict=True)
  conv_zeros = sum(int((m.weight == 0).sum()) for m in net.modules() if isinstance(m, torch.nn.Conv2d))
  conv_total = sum(m.weight.numel() for m in net.modules() if isinstance(m, torch.nn.Conv2d))
  assert abs(conv_zeros / conv_total - report["sparsity"]["conv"]) < 1e-3
  result = _cli("export", f"--workdir={workdir}", f"--output={tmp_path / 'jackpot.safetensors'}")
  assert result.returncode == 0, result.stderr[-2000:]
  for name in ("jackpot.pth", "jackpot.safetensors"):
    loaded = _run_readme_loading_code(tmp_path, name,
                                      lambda: CifarResNet(TINY_DEPTH, num_classes=10, in_channels=1))
    assert loaded["zeros"] == conv_zeros, name


def _run_readme_loading_code(folder, file_name: str, make_model) -> dict:
  """Runs the README's "loading the result back into PyTorch" code as it is printed there,
  in `folder`, on `file_name`: what a user copies must work."""
  readme = (REPO / "README.md").read_text()
  section = readme[readme.index("## Export, and loading the result back into PyTorch"):]
  code = section[section.index("```python\n") + len("```python\n"):]
  code = code[:code.index("```")]
  if file_name.endswith(".safetensors"):
    code = code.replace('state = torch.load("jackpot.pth", weights_only=True)',
                        'state = load_file("jackpot.safetensors")')
  assert file_name in code
  namespace = {"make_model": make_model}
  cwd = os.getcwd()
  os.chdir(folder)
  try:
    exec(compile(code, "README.md", "exec"), namespace)  # pylint: disable=exec-used
  finally:
    os.chdir(cwd)
  return namespace


def test_evaluate_and_export_take_overrides_of_how_they_run_only(finished_tiny_run, tmp_path):
  workdir = tmp_path / "run"
  shutil.copytree(finished_tiny_run[0], workdir)
  report = finished_tiny_run[1]
  result = _cli("evaluate", f"--workdir={workdir}", "--config.eval.batch_size=3",
                "--config.mesh.num_devices=1")
  assert result.returncode == 0, result.stderr[-2000:]
  reevaluated = json.loads((workdir / "report.json").read_text())
  assert reevaluated["accuracy"]["jackpot"] == report["accuracy"]["jackpot"]
  assert result.stdout.splitlines()[-1] == cli.summary_line(reevaluated, str(workdir))
  assert result.stdout.splitlines()[-1].startswith(
      f"jackpot {100 * report['accuracy']['jackpot']:.2f}% top-1 at ")
  refused = _cli("export", f"--workdir={workdir}", f"--output={tmp_path / 'x.pth'}",
                 "--config.search.sparsity=0.5")
  assert refused.returncode == 2
  assert refused.stderr.strip().splitlines() == [
      f"jackpot: error: search.sparsity cannot be changed in the config of {workdir}; these "
      "can: eval.batch_size, eval.perplexity_batch_size, data.data_dir, data.prefetch, "
      "data.workers, mesh, progress_bar, compilation_cache_dir, data.token_cache_dir"]
  assert not (tmp_path / "x.pth").exists()


def test_command_line_bad_input_is_one_line_with_exit_status_2(tmp_path):
  result = _cli("search", "--config=configs/default.py", f"--workdir={tmp_path}",
                "--config.search.sparsity=1.5")
  assert result.returncode == 2
  assert result.stderr.strip().count("\n") == 0
  assert "search.sparsity must be in [0, 1)" in result.stderr


def test_export_after_tuning_writes_the_tuned_weights_under_the_mask(tiny_job, tmp_path):
  config = tiny_config(tiny_job)
  config.tune.num_epochs, config.tune.batch_size, config.tune.learning_rate = 0.5, 16, 0.5
  report = job.search_and_evaluate(config, tmp_path / "run")
  assert report["accuracy"]["tuned"] is not None
  exported = workdir_export.export_workdir(tmp_path / "run", tmp_path / "tuned.pth")
  original = torch.load(tiny_job / TINY_CHECKPOINT, weights_only=True)
  tuned = torch.load(exported, weights_only=True)
  masks = jax.device_get(final_search_state(config, tmp_path / "run").masks)
  mask = torch.from_numpy(np.asarray(masks["layer1_0"]["conv1"]["kernel"]).transpose(3, 2, 0, 1).copy())
  weight = tuned["layer1.0.conv1.weight"]
  assert torch.all(weight[mask == 0] == 0)
  kept_change = (weight - original["layer1.0.conv1.weight"])[mask == 1].abs().max()
  assert kept_change > 1e-4, "the export holds the searched weights, not the tuned ones"


def test_workdir_from_before_newer_config_fields_still_resumes_and_evaluates(tiny_job, tmp_path):
  config = tiny_config(tiny_job)
  job.search_and_evaluate(config, tmp_path, stop_after=2)
  saved = json.loads((tmp_path / "config.json").read_text())
  del saved["eval"]["stop_within_dense"], saved["mesh"]["fsdp_min_size"]
  del saved["compilation_cache_dir"]
  (tmp_path / "config.json").write_text(json.dumps(saved))
  assert job.search_and_evaluate(config, tmp_path)["search"]["steps"] == 6
  assert job.evaluate_workdir(tmp_path)["search"]["steps"] == 6


def test_bfloat16_search_runs_end_to_end_with_float32_scores(tiny_job, tmp_path):
  config = tiny_config(tiny_job)
  config.model.dtype = "bfloat16"
  report = job.search_and_evaluate(config, tmp_path / "bf16")
  assert report["search"]["steps"] == 6
  assert report["search"]["dtype"] == "bfloat16"
  assert "bfloat16 compute" in (tmp_path / "bf16" / "report.md").read_text()
  assert 0.0 <= report["accuracy"]["jackpot"] <= 1.0
  state = final_search_state(config, tmp_path / "bf16")
  assert all(s.dtype == np.float32 for s in jax.tree.leaves(state.scores))
