"""`jackpot baselines` on a tiny random Llama with its tokenizer and text: the report's keys
and structural facts (the dense perplexity is run/perplexity.py's, every mask at its
target), the command line end to end, and bad input in one line with nothing written."""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys

import pytest
import torch

from jackpot_jax import cli, config_files
from jackpot_jax.pytorch.hf_decoders import import_hf_decoder
from jackpot_jax.run import (lm_baselines, lm_masks, lm_spec, parallel,
                             perplexity as perplexity_lib, spec as spec_lib, workdir_export)

from conftest import REPO, assert_refused_in_one_line
from tiny_decoders import llm_overrides, transformers_perplexity, save_tiny_llama, write_llama_folders
from tiny_text import documents, write_tokenizer
import transformers  # noqa: E402  (after tiny_decoders, which keeps TensorFlow out of it)

SEQ_LEN = 16
TRAIN, TEST = documents(20, seed=0), documents(5, seed=1)
METHODS = ("magnitude", "wanda", "sparsegpt")
PERPLEXITIES = ("dense", "magnitude", "wanda", "sparsegpt", "sparsegpt_updated")
REPORT_KEYS = {"command", "model", "model_description", "checkpoint", "dataset", "target",
               "perplexity", "masks", "calibration", "wall_seconds", "devices", "machine",
               "jax_version"}
SHIPPED = REPO / "pretrained" / "llm_tiny"


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """(model folder with its tokenizer, text folder, token cache)."""
  return write_llama_folders(tmp_path_factory.mktemp("llm"), TRAIN, TEST)


def _overrides(folders, **changes) -> dict:
  return llm_overrides(folders, SEQ_LEN, **changes)


def _config(folders, **changes):
  return config_files.load_config("llm_tiny", _overrides(folders, **changes))


@pytest.fixture(scope="module")
def run_24(folders, tmp_path_factory):
  """(workdir, report) of the job at 2:4, run in-process."""
  workdir = tmp_path_factory.mktemp("llm_24")
  return workdir, lm_baselines.run_baselines(_config(folders), workdir)


def test_the_report_holds_every_key_and_is_what_the_workdir_holds(run_24):
  workdir, report = run_24
  assert set(report) == REPORT_KEYS
  assert json.loads((workdir / "report.json").read_text()) == json.loads(json.dumps(report))
  assert set(report["perplexity"]) == {*PERPLEXITIES, "jackpot", "protocol"}
  assert report["perplexity"]["jackpot"] is None  # no search ran
  assert report["perplexity"]["protocol"]["protocol"] == "packed"
  assert report["target"] == {"pattern": "2:4", "sparsity": 0.5}
  assert set(report["masks"]) == set(METHODS)
  assert report["calibration"] == {"sequences": 4, "seq_len": SEQ_LEN, "tokens": 4 * SEQ_LEN,
                                   "seed": 0, "split": "search", "batch_size": 2}
  assert report["model"] == "llama" and report["model_description"]["model_type"] == "llama"
  assert report["model_description"]["maskable_layers"] == 14  # 7 projections, 2 blocks
  assert set(report["wall_seconds"]) == {"import", "dense", "total", *METHODS}
  assert set(report["wall_seconds"]["sparsegpt"]) == {"prune", "perplexity",
                                                       "perplexity_updated"}
  assert {"count", "platform", "processes", "kind"} <= set(report["devices"])
  assert "| SparseGPT (with its weight update) |" in (workdir / "report.md").read_text()
  assert json.loads((workdir / "config.json").read_text())["model"]["name"] == "llama"


def test_dense_perplexity_is_run_perplexitys_and_every_perplexity_is_finite(folders, run_24):
  _, report = run_24
  model, params, _ = import_hf_decoder(folders[0])
  data = {"name": f"text:{folders[1]}", "tokenizer": str(folders[0]), "seq_len": SEQ_LEN,
          "token_cache_dir": str(folders[2])}
  dense = perplexity_lib.perplexity(model, params, data, batch_size=4,
                                    mesh=parallel.make_mesh(num_devices=1))
  assert report["perplexity"]["dense"] == pytest.approx(dense.perplexity, rel=1e-6)
  for key in PERPLEXITIES:
    assert math.isfinite(report["perplexity"][key]) and report["perplexity"][key] >= 1, key


def test_every_masked_layer_keeps_two_of_every_four(run_24):
  _, report = run_24
  maskable = report["model_description"]["maskable_parameters"]
  for method, counted in report["masks"].items():
    assert counted["at_target"] and counted["nm_valid"], method
    assert counted["layers"] == 14 and counted["unmasked_layers"] == []
    assert counted["size"] == maskable and counted["masked"] == counted["kept"] == maskable // 2
    assert set(counted["per_layer"].values()) == {0.5}


def test_the_command_line_runs_50_percent_unstructured_and_prints_the_summary_last(folders,
                                                                                   tmp_path):
  overrides = _overrides(folders, **{"search.pattern": "unstructured", "search.sparsity": 0.5})
  done = subprocess.run(
      [sys.executable, "-m", "jackpot_jax", "baselines", "--config=llm_tiny",
       f"--workdir={tmp_path / 'w'}", *(f"--config.{k}={v}" for k, v in overrides.items())],
      cwd=tmp_path, env={**os.environ, "PYTHONPATH": str(REPO)}, capture_output=True,
      text=True, timeout=300)
  assert done.returncode == 0, done.stderr
  last = done.stdout.strip().splitlines()[-1]
  assert re.fullmatch(r"perplexity at 50% unstructured \(test split, \d+ x 16 tokens\): "
                      r"dense [\d.]+, magnitude [\d.]+, Wanda [\d.]+, SparseGPT \(mask alone\) "
                      r"[\d.]+, SparseGPT \(with its weight update\) [\d.]+; report: "
                      + re.escape(f"{tmp_path / 'w'}/report.json"), last), last
  report = json.loads((tmp_path / "w" / "report.json").read_text())
  assert report["target"] == {"pattern": "unstructured", "sparsity": 0.5}
  for method, counted in report["masks"].items():
    assert counted["at_target"] and counted["nm_valid"] is None, method
    assert 0.45 < counted["sparsity"] <= 0.5


def _broken(case: str, folders, tmp_path) -> dict:
  """The overrides of a config with one bad input."""
  if case == "no_config_json":
    folder = tmp_path / "no_config"
    shutil.copytree(folders[0], folder)
    (folder / "config.json").unlink()
    return {"model.checkpoint": str(folder)}
  if case == "model_type":
    folder = tmp_path / "bert"
    shutil.copytree(folders[0], folder)
    config = json.loads((folder / "config.json").read_text())
    (folder / "config.json").write_text(json.dumps({**config, "model_type": "bert"}))
    return {"model.checkpoint": str(folder)}
  if case == "vocabulary":
    folder = save_tiny_llama(write_tokenizer(tmp_path / "small", TRAIN), vocab_size=200)
    return {"model.checkpoint": str(folder)}
  return {"data.seq_len": 100_000}


@pytest.mark.parametrize("case,message", [
    ("no_config_json", r"model.checkpoint \S+ has no config.json; `jackpot baselines` reads"),
    ("model_type", r"config.json's model_type 'bert' is not a language model .*supported: "
                   r"llama, qwen2, gpt2"),
    ("vocabulary", r"token ids up to \d+, beyond the model's vocab_size 200"),
    ("too_short", r"the \w+ split has \d+ tokens, fewer than one sequence of "
                  r"data.seq_len=100000"),
])
def test_bad_input_is_one_line_with_exit_status_2_and_writes_nothing(folders, tmp_path, capsys,
                                                                      case, message):
  config = _config(folders, **_broken(case, folders, tmp_path))
  workdir = tmp_path / "w"
  assert_refused_in_one_line(lambda: lm_baselines.run_baselines(config, workdir), workdir,
                             capsys, message)


def test_the_image_search_set_up_refuses_a_language_model(folders):
  """A decoder config never reaches the image path: `jackpot search` sends it to the
  language-model search before, and the image set-up says so if called directly."""
  with pytest.raises(ValueError, match=r"holds a llama language model; the image search "
                                       r"cannot run it: `jackpot search` runs it through"):
    spec_lib.resolve(_config(folders))


def test_baselines_help_shows_the_shipped_llm_config_and_its_fields(capsys):
  with pytest.raises(SystemExit) as exited:
    cli._flags_parser(["jackpot", "baselines", "--help"])
  text = capsys.readouterr().out
  assert exited.value.code == 0 and text.startswith("usage: jackpot baselines")
  assert "of the shipped llm_tiny config" in text
  for line in ("--config.search.pattern='2:4'", "--config.baselines.calibration_sequences=128",
               "--config.baselines.methods=('magnitude', 'wanda', 'sparsegpt')"):
    assert line in text


@pytest.mark.skipif(not SHIPPED.is_dir(), reason="the shipped tiny Llama is not in this checkout")
def test_the_shipped_config_resolves_to_the_shipped_llama_and_text():
  spec = lm_spec.resolve(config_files.load_config("llm_tiny"))
  assert spec.folder == SHIPPED and spec.config.model.name == "llama"
  assert spec.data.kind == "text" and spec.data.tokenizer == str(SHIPPED)
  assert str(spec.target) == "2:4" and spec.methods == METHODS


def test_export_hf_writes_a_folder_transformers_loads_at_the_reported_perplexity(run_24, folders,
                                                                                  tmp_path):
  """`export --format=hf --method=wanda`: every projection of the written folder keeps at
  most 2 of each 4 weights along its input dimension, the rest of the model is the
  checkpoint's, and transformers evaluates it to the report's perplexity."""
  workdir, report = run_24
  assert lm_masks.saved_methods(workdir) == tuple(sorted(METHODS))
  output = workdir_export.export_workdir(workdir, tmp_path / "wanda", "hf", method="wanda")
  model = transformers.AutoModelForCausalLM.from_pretrained(output).eval()
  source = transformers.AutoModelForCausalLM.from_pretrained(folders[0]).eval()
  projections = 0
  for (name, weight), (_, original) in zip(model.named_parameters(), source.named_parameters()):
    if name.endswith("_proj.weight"):
      projections += 1
      groups = weight.detach().numpy().reshape(weight.shape[0], -1, 4)
      assert ((groups != 0).sum(-1) <= 2).all(), name
    else:
      assert torch.equal(weight, original), name
  assert projections == 2 * 7
  assert transformers_perplexity(model, folders[0], TEST, SEQ_LEN) == pytest.approx(
      report["perplexity"]["wanda"], rel=1e-4)


def test_export_format_and_method_must_fit_the_workdir(run_24, tmp_path):
  workdir, _ = run_24
  with pytest.raises(ValueError, match="use --format=hf") as error:
    workdir_export.export_workdir(workdir, tmp_path / "out.pth", "state_dict")
  assert "\n" not in str(error.value)
  with pytest.raises(ValueError, match="keeps the masks of magnitude, sparsegpt, wanda"):
    workdir_export.export_workdir(workdir, tmp_path / "out", "hf", method="jackpot")
  assert not (tmp_path / "out").exists()
