"""benchmarks/memory.py's language-model mode runs on a tiny random Llama and reports what
it measured, and benchmarks/memory_arithmetic.py's sums are the bytes the search holds:
against hand arithmetic, the benchmark's measured state and JAX's saved residuals."""

from __future__ import annotations

import importlib.util
import json
import math
import os
import subprocess
import sys

import jax
import jax.numpy as jnp
import optax
import pytest
from flax import traverse_util
from jax._src.ad_checkpoint import saved_residuals  # print_saved_residuals' list, as data

from conftest import REPO
from jackpot_jax.models.wrapper import MASKS
from jackpot_jax.pytorch.hf_decoders import import_hf_decoder
from jackpot_jax.run import parallel
from jackpot_jax.search import masking

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
import transformers  # noqa: E402

BENCHMARK = REPO / "benchmarks" / "memory.py"
TINY_LLAMA = dict(vocab_size=256, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                  num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
KIND_FIELDS = {"peak_rss_bytes", "added_rss_bytes", "device_peak_bytes", "compiled_bytes",
               "state_bytes", "frozen_bytes", "compiled_temp_bytes", "trained_params",
               "state_bytes_per_param"}


def _arithmetic():
  spec = importlib.util.spec_from_file_location(
      "memory_arithmetic", REPO / "benchmarks" / "memory_arithmetic.py")
  module = importlib.util.module_from_spec(spec)
  sys.modules[spec.name] = module  # its dataclasses look their module up there
  spec.loader.exec_module(module)
  return module


arithmetic = _arithmetic()


@pytest.fixture(scope="module")
def llama_folder(tmp_path_factory):
  """A random Llama as transformers' save_pretrained writes it."""
  folder = tmp_path_factory.mktemp("llama")
  transformers.LlamaForCausalLM(transformers.LlamaConfig(**TINY_LLAMA)).save_pretrained(folder)
  return folder


def test_the_language_model_mode_reports_each_kinds_memory_and_bytes_per_parameter(
    llama_folder):
  env = dict(os.environ, PYTHONPATH=os.pathsep.join(
      filter(None, [str(REPO), os.environ.get("PYTHONPATH")])))
  done = subprocess.run(
      [sys.executable, str(BENCHMARK), "--model=llm", f"--checkpoint={llama_folder}",
       "--batch_size=2", "--seq_len=16", "--steps=1", "--config.search.momentum=0"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
  assert done.returncode == 0, done.stderr[-3000:]
  result = json.loads(done.stdout.strip().splitlines()[-1])

  leaves = arithmetic.llama_leaves(TINY_LLAMA)
  params = sum(leaf.size for leaf in leaves)
  masked = sum(leaf.size for leaf in leaves if leaf.masked)
  assert (result["model"], result["model_type"], result["seq_len"]) == ("llm", "llama", 16)
  assert (result["params"], result["masked_params"]) == (params, masked)
  assert result["momentum"] == 0.0 and result["dtype"] == "float32"
  search, dense = result["search"], result["dense"]
  assert set(search) == set(dense) == KIND_FIELDS
  for kind in (search, dense):
    assert kind["peak_rss_bytes"] >= kind["added_rss_bytes"] > 0
    assert kind["compiled_bytes"] > kind["compiled_temp_bytes"] > 0
  # SGD without momentum: the search holds a float32 score and a bool mask per masked
  # weight (plus the step counters), dense training the float32 weights alone.
  per_masked = arithmetic.bytes_per_parameter("float32", "sgd")["masked"]
  held_state = sum(v for k, v in per_masked.items()
                   if k in ("held: score", "held: optimizer state", "held: mask"))
  assert held_state == 5
  assert search["state_bytes"] - held_state * masked in range(0, 16)
  assert search["frozen_bytes"] == 4 * params and dense["frozen_bytes"] == 0
  assert search["state_bytes_per_param"] == pytest.approx(5.0, abs=1e-3)
  assert dense["state_bytes_per_param"] == pytest.approx(4.0, abs=1e-3)
  assert result["search_over_dense_compiled"] == round(
      search["compiled_bytes"] / dense["compiled_bytes"], 4)


@pytest.mark.parametrize("dtype, optimizer, held, with_step, unmasked", [
    ("bfloat16", "sgd_momentum", 2 + 4 + 4 + 1, 2 + 4 + 4 + 1 + 4 + 2 + 1, 2),
    ("bfloat16", "sgd", 2 + 4 + 0 + 1, 2 + 4 + 0 + 1 + 4 + 2 + 1, 2),
    ("bfloat16", "adam", 2 + 4 + 8 + 1, 2 + 4 + 8 + 1 + 4 + 2 + 1, 2),
    ("float32", "sgd_momentum", 4 + 4 + 4 + 1, 4 + 4 + 4 + 1 + 4 + 4 + 1, 4),
])
def test_bytes_per_parameter_sum_to_hand_arithmetic(dtype, optimizer, held, with_step,
                                                    unmasked):
  table = arithmetic.bytes_per_parameter(dtype, optimizer)
  masked_held, masked_step = arithmetic.held_and_step(table["masked"])
  assert (masked_held, masked_held + masked_step) == (held, with_step)
  assert arithmetic.held_and_step(table["unmasked"]) == (unmasked, 0)


def test_llama_2_sizes_and_their_fsdp_share_per_device():
  seven_b = arithmetic.llama_leaves(arithmetic.MODELS["Llama-2-7B"])
  masked_7b = 32 * (4 * 4096 ** 2 + 3 * 4096 * 11008)
  assert sum(l.size for l in seven_b if l.masked) == masked_7b == 6_476_005_376
  assert sum(l.size for l in seven_b) == masked_7b + 2 * 32000 * 4096 + 65 * 4096
  seventy_b = arithmetic.llama_leaves(arithmetic.MODELS["Llama-2-70B"])
  masked_70b = 80 * (2 * 8192 ** 2 + 2 * 8192 * 1024 + 3 * 8192 * 28672)
  assert sum(l.size for l in seventy_b if l.masked) == masked_70b
  assert sum(l.size for l in seventy_b) == masked_70b + 2 * 32000 * 8192 + 161 * 8192

  footprint = arithmetic.footprint(seven_b, "bfloat16", "sgd_momentum", 64)
  norms = 65 * 4096  # below mesh.fsdp_min_size: whole on every device
  assert footprint.held_bytes == 11 * masked_7b + 2 * (2 * 32000 * 4096 + norms)
  assert footprint.held_per_device == pytest.approx(
      (footprint.held_bytes - 2 * norms) / 64 + 2 * norms)
  assert footprint.step_per_device == pytest.approx(
      7 * masked_7b / 64 + 2 * (4 * 4096 ** 2 + 3 * 4096 * 11008))


@pytest.mark.parametrize("devices", [8, 64])
def test_the_fsdp_split_is_run_parallels(devices):
  for name in ("Llama-2-7B", "Llama-2-70B"):
    for leaf in arithmetic.llama_leaves(arithmetic.MODELS[name]):
      spec = parallel._fsdp_spec(leaf.shape, devices, arithmetic.FSDP_MIN_SIZE)
      assert arithmetic.fsdp_divisor(leaf.shape, devices) == (
          devices if parallel.MODEL in spec else 1), (name, leaf)


@pytest.mark.parametrize("dtype", ["float32", "bfloat16"])
def test_the_activation_formula_is_within_3_percent_of_jaxs_saved_residuals(llama_folder,
                                                                            dtype):
  model, params, _ = import_hf_decoder(llama_folder, dtype=dtype)
  flat = traverse_util.flatten_dict(params)
  scores = traverse_util.unflatten_dict({path: jnp.ones(leaf.shape) for path, leaf in flat.items()
                                         if path[0] == "model" and path[-1] == "kernel"})
  masks = jax.tree.map(lambda s: s > 0, scores)
  batch, seq_len = 4, 64
  tokens = jnp.zeros((batch, seq_len), jnp.int32)

  def loss(scores):
    straight = jax.tree.map(masking.straight_through, scores, masks)
    logits = model.apply({"params": params, MASKS: straight}, tokens)
    return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(
        logits[:, :-1].astype(jnp.float32), tokens[:, 1:]))

  saved = sum(math.prod(aval.shape) * aval.dtype.itemsize
              for aval, origin in saved_residuals(loss, scores)
              if "constant" not in origin and "literal" not in origin
              and "_masked_params" not in origin)  # the weights and W * M are tabled apart
  formula = batch * arithmetic.activation_bytes_per_sequence(TINY_LLAMA, seq_len, dtype)
  assert formula == pytest.approx(saved, rel=0.03)


def test_the_tables_of_docs_memory_md_are_what_the_script_prints():
  doc = (REPO / "docs" / "memory.md").read_text().splitlines()
  printed = [arithmetic.per_parameter_table()] + [
      arithmetic.model_table(name, config, [512, 2048, 4096])
      for name, config in arithmetic.MODELS.items()]
  rows = [line for table in printed for line in table.splitlines() if line.startswith("|")]
  assert all(row in doc for row in rows), [row for row in rows if row not in doc]
