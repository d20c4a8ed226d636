"""`jackpot search` on a tiny random Llama with its tokenizer and text: the search's report,
its start from each one-shot mask, resume, held-out selection, evaluate, the 2:4 export
that transformers loads at the reported perplexity, 8 devices against 1, and bad input."""

from __future__ import annotations

import json
import math
import re

import numpy as np
import pytest
import torch
from flax import traverse_util
from torch.sparse._semi_structured_conversions import (
    sparse_semi_structured_from_dense_cutlass, sparse_semi_structured_to_dense_cutlass)

from jackpot_jax import cli, config_files
from jackpot_jax.run import (job, lm_masks, lm_search, lm_spec, perplexity as perplexity_lib,
                             workdir_export)
from jackpot_jax.search import masking

from conftest import assert_refused_in_one_line
from tiny_decoders import llm_overrides, transformers_perplexity, write_llama_folders
from tiny_text import documents
import transformers  # noqa: E402  (after tiny_decoders, which keeps TensorFlow out of it)

SEQ_LEN = 16
TRAIN, TEST = documents(40, seed=0), documents(5, seed=1)
BASELINE_KEYS = ("dense", "magnitude", "wanda", "sparsegpt", "sparsegpt_updated", "jackpot")
STEPS = 6


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """(model folder with its tokenizer, text folder, token cache)."""
  # Every projection weight [out, in] packs as float16 2:4 (out % 32 == 0, in % 64 == 0).
  return write_llama_folders(tmp_path_factory.mktemp("llm_search"), TRAIN, TEST,
                             hidden_size=64, intermediate_size=128)


def _overrides(folders, **changes) -> dict:
  return llm_overrides(folders, SEQ_LEN, **{
      "data.holdout_sequences": 8, "search.batch_size": 4, "search.learning_rate": 1.0,
      "search.distill_weight": 0.5, "progress_bar": False, "checkpoint.every_steps": 2,
      **changes})


def _config(folders, **changes):
  """The shipped llm_tiny config on the tiny folders, searched STEPS steps with an
  evaluation every 2."""
  config = config_files.load_config("llm_tiny", _overrides(folders, **changes))
  steps_per_epoch = lm_search.setup_language_model(lm_spec.resolve_search(config)).steps_per_epoch
  config.search.num_epochs = STEPS / steps_per_epoch
  config.eval.every_epochs = 2 / steps_per_epoch
  return config


@pytest.fixture(scope="module")
def searched(folders, tmp_path_factory):
  """(config, workdir, report) of a 2:4 search with distillation, in-process."""
  workdir = tmp_path_factory.mktemp("searched")
  config = _config(folders)
  return config, workdir, job.search_and_evaluate(config, workdir)


def _flat(tree):
  return traverse_util.flatten_dict(tree)


def test_the_report_holds_every_perplexity_the_history_and_a_jackpot_at_2_4(searched):
  config, workdir, report = searched
  assert report["command"] == "search"
  assert all(math.isfinite(report["perplexity"][key]) for key in BASELINE_KEYS)
  counted = report["masks"]["jackpot"]
  assert counted["at_target"] and counted["nm_valid"] and counted["sparsity"] == 0.5
  search = report["search"]
  assert search["steps"] == STEPS and search["score_init"] == "magnitude"
  assert search["distill_weight"] == 0.5 and search["selected_on"] == "holdout"
  assert [entry["step"] for entry in search["history"]] == [0, 2, 4, 6]
  best = min(search["history"], key=lambda entry: (entry["holdout_perplexity"], -entry["step"]))
  assert search["selected"] == {"step": best["step"], "perplexity": best["holdout_perplexity"]}
  assert json.loads((workdir / "report.json").read_text()) == report
  assert "| jackpot (searched from magnitude, 6 steps, distilled) |" in (
      workdir / "report.md").read_text()


def test_the_reported_perplexity_is_the_saved_jackpots_and_the_search_moved_it(searched):
  config, workdir, report = searched
  setup = lm_search.setup_language_model(lm_spec.resolve_search(config))
  jackpot = lm_masks.load_masks(workdir, "jackpot")
  start = lm_masks.load_masks(workdir, "magnitude")
  assert setup.measure(jackpot).perplexity == pytest.approx(report["perplexity"]["jackpot"],
                                                            rel=1e-6)
  flips = sum(int(np.sum(_flat(jackpot)[p] != m)) for p, m in _flat(start).items())
  if report["search"]["selected"]["step"] > 0:
    assert flips > 0
  history = report["search"]["history"]
  assert len({round(entry["holdout_perplexity"], 6) for entry in history}) > 1


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_the_scores_start_at_the_named_one_shot_mask(searched, method):
  """search.score_init=<method>: the first state's masks are that baseline's masks exactly
  (kept 1.0, pruned 0.99), its scores rank no other mask first."""
  config, workdir, _ = searched
  setup = lm_search.setup_language_model(lm_spec.resolve_search(config))
  start = lm_masks.load_masks(workdir, method)
  state = lm_search.initial_state(setup, start, lm_search.keep_counts(setup.spec.target, start))
  for path, mask in _flat(start).items():
    np.testing.assert_array_equal(np.asarray(_flat(state.masks)[path]), mask, str(path))
    np.testing.assert_array_equal(np.asarray(_flat(state.scores)[path]) == 1.0, mask)


def test_a_stopped_search_resumes_to_the_uninterrupted_jackpot(searched, tmp_path):
  config, workdir, report = searched
  assert job.search_and_evaluate(config, tmp_path, stop_after=3) == {"stopped_at": 3}
  resumed = job.search_and_evaluate(config, tmp_path)
  assert resumed["search"]["history"] == report["search"]["history"]
  assert resumed["perplexity"]["jackpot"] == report["perplexity"]["jackpot"]
  for path, mask in _flat(lm_masks.load_masks(workdir, "jackpot")).items():
    np.testing.assert_array_equal(_flat(lm_masks.load_masks(tmp_path, "jackpot"))[path], mask)


def test_evaluate_measures_the_selected_jackpot_again(searched):
  _, workdir, report = searched
  again = job.evaluate_workdir(workdir, {"eval.perplexity_batch_size": 2})
  assert again["perplexity"]["jackpot"] == pytest.approx(report["perplexity"]["jackpot"],
                                                         rel=1e-6)
  assert again["search"]["selected"] == report["search"]["selected"]


def test_unstructured_search_keeps_each_layers_start_count(folders, tmp_path):
  config = _config(folders, **{"search.pattern": "unstructured", "search.sparsity": 0.5,
                               "search.score_init": "wanda", "search.distill_weight": 0.0})
  report = job.search_and_evaluate(config, tmp_path)
  start, jackpot = (_flat(lm_masks.load_masks(tmp_path, name)) for name in ("wanda", "jackpot"))
  for path, mask in start.items():
    assert int(np.sum(jackpot[path])) == int(np.sum(mask)), path
  assert report["masks"]["jackpot"]["at_target"]
  assert report["masks"]["jackpot"]["nm_valid"] is None


def test_export_hf_writes_the_jackpot_as_2_4_linears_transformers_evaluates(searched, folders,
                                                                            tmp_path):
  """Every masked Linear keeps at most 2 of each 4 consecutive weights along its input
  dimension (what to_sparse_semi_structured requires), survives PyTorch's 2:4 packing
  round trip, and transformers measures the report's perplexity."""
  _, workdir, report = searched
  output = workdir_export.export_workdir(workdir, tmp_path / "hf", "hf")
  model = transformers.AutoModelForCausalLM.from_pretrained(output).eval()
  source = transformers.AutoModelForCausalLM.from_pretrained(folders[0]).eval()
  projections = 0
  for (name, weight), (_, original) in zip(model.named_parameters(), source.named_parameters()):
    if not name.endswith("_proj.weight"):
      assert torch.equal(weight, original), name
      continue
    projections += 1
    weight = weight.detach()
    groups = weight.reshape(weight.shape[0], -1, 4)
    assert ((groups != 0).sum(-1) <= 2).all(), name
    half = weight.half()
    assert half.shape[0] % 32 == 0 and half.shape[1] % 64 == 0, name
    compressed, meta = sparse_semi_structured_from_dense_cutlass(half)
    assert torch.equal(sparse_semi_structured_to_dense_cutlass(compressed, meta), half), name
  assert projections == 2 * 7
  assert transformers_perplexity(model, folders[0], TEST, SEQ_LEN) == pytest.approx(
      report["perplexity"]["jackpot"], rel=1e-4)


@pytest.mark.eight_devices
def test_eight_fsdp_devices_search_the_one_device_masks(folders, tmp_path):
  """Weights, scores and optimizer state sharded over 8 devices (mesh.model=8, FSDP): the
  same jackpot and held-out history as one device."""
  sharded = _config(folders, **{"mesh.num_devices": 8, "mesh.model": 8, "mesh.fsdp": True,
                                "mesh.fsdp_min_size": 256, "search.batch_size": 8,
                                "baselines.batch_size": 8, "baselines.calibration_sequences": 8,
                                "eval.perplexity_batch_size": 8})
  reference = _config(folders, **{"search.batch_size": 8, "baselines.batch_size": 8,
                                  "baselines.calibration_sequences": 8,
                                  "eval.perplexity_batch_size": 8})
  setup = lm_search.setup_language_model(lm_spec.resolve_search(sharded))
  kernel = setup.params["model"]["layers_0"]["mlp"]["up_proj"]["kernel"]
  assert len(kernel.sharding.device_set) == 8 and not kernel.sharding.is_fully_replicated
  one = job.search_and_evaluate(reference, tmp_path / "reference")
  eight = job.search_and_evaluate(sharded, tmp_path / "eight")
  for a, b in zip(one["search"]["history"], eight["search"]["history"]):
    assert a["holdout_perplexity"] == pytest.approx(b["holdout_perplexity"], rel=1e-5)
  for path, mask in _flat(lm_masks.load_masks(tmp_path / "reference", "jackpot")).items():
    np.testing.assert_array_equal(
        _flat(lm_masks.load_masks(tmp_path / "eight", "jackpot"))[path], mask, str(path))


@pytest.mark.parametrize("change,message", [
    ({"search.score_init": "kaiming"}, r"search.score_init='kaiming': a language model's search "
                                       r"starts from a one-shot mask; choose one of magnitude"),
    ({"tune.num_epochs": 1.0}, r"tune.num_epochs=1.0 has no meaning for a language model"),
    ({"search.distill_weight": 2.0}, r"search.distill_weight must be in \[0, 1\]"),
    ({"search.sparsity_ramp": 0.5}, r"search.sparsity_ramp=0.5: a language model's search "
                                    r"starts from a one-shot mask at the target"),
    ({"search.max_flips_per_step": 4}, r"search.max_flips_per_step caps top-k swaps; "
                                       r"search.pattern=2:4 selects within groups"),
    ({"search.batch_size": 1000}, r"search.batch_size=1000 is more than the \d+ searched"),
])
def test_bad_search_input_is_one_line_with_exit_status_2(folders, tmp_path, capsys, change,
                                                         message):
  config = config_files.load_config("llm_tiny", _overrides(folders, **change))
  workdir = tmp_path / "w"
  assert_refused_in_one_line(lambda: job.search_and_evaluate(config, workdir), workdir, capsys,
                             message)


def test_the_summary_line_names_the_jackpot_beside_every_baseline(searched):
  _, workdir, report = searched
  line = cli.summary_line(report, str(workdir))
  assert re.search(r"SparseGPT \(with its weight update\) [\d.]+, jackpot \(searched from "
                   r"magnitude, 6 steps, distilled\) [\d.]+; report: ", line), line
  assert masking.parse_pattern(report["target"]["pattern"]) is not None
  assert perplexity_lib.PROTOCOL == report["perplexity"]["protocol"]["protocol"]


def test_the_search_stage_reads_the_decoder_layers_for_block_targets(searched, folders):
  from jackpot_jax.models.llama import DecoderLayer
  searched_config, workdir, _ = searched
  config = _config(folders, **{"search.feature_distill_weight": 0.5,
                               "search.local_fraction": 0.5})
  setup = lm_search.setup_language_model(lm_spec.resolve_search(config))
  start = lm_masks.load_masks(workdir, searched_config.search.score_init)
  stage = lm_search.search_stage(setup, workdir / "unused", start)
  assert stage.step.keywords["blocks"] == (DecoderLayer,)
  assert stage.step.keywords["feature_weight"] == 0.5
  assert stage.first_steps == STEPS // 2 and stage.first_step.keywords["local"] is True
