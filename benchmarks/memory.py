"""Peak memory of a search against dense training of the same model and batch.

Each kind runs in its own child process (peak RSS is per process): it builds the model
with random weights, then the search state (scores, their optimizer state, masks) or the
dense training state (weights, their optimizer state), and runs `--steps` steps. Printed
per kind:
- `peak_rss_bytes`: the child's peak resident set (ru_maxrss; on the CPU backend every
  array lives there), and `added_rss_bytes`: that peak above the resident set the child
  had once JAX was up, before the model was built (the runtime's own share left out);
- `device_peak_bytes`: `jax.devices()[0].memory_stats()["peak_bytes_in_use"]` where the
  backend reports it (GPU, TPU), else null;
- `compiled_bytes`: what XLA's memory analysis of the compiled step says it holds
  (arguments + outputs + temporaries - donated aliases), the same on every run;
- `state_bytes`: the trained state's arrays.
Goal: search <= 1.3x dense. The search keeps optimizer state for the scores only and
no second copy of the weights (the frozen weights are an argument, never in the state).

  python benchmarks/memory.py --model=resnet50 --image_size=224 --batch_size=32 \
      --num_classes=1000 [--config.model.dtype=bfloat16]

`--model=llm` measures a causal language model instead: a Hugging Face decoder folder
(`--checkpoint`, imported in `--config.model.dtype`, activations following), random
tokens, `--batch_size` sequences of `--seq_len`. The search kind trains a score per
weight of every decoder-block projection through the straight-through masks on the
next-token loss (the language-model search's own step, `lm_steps.lm_search_step`); dense
trains every weight with the same optimizer (`lm_steps.lm_train_step`). Each kind also reports `compiled_temp_bytes` (XLA's
temporaries: activations and the step's transients) and `state_bytes_per_param` (over
the masked parameters for the search, all of them for dense). The `--config.search.*`
overrides apply (e.g. `--config.search.momentum=0`, `--config.search.pattern=2:4`).

  python benchmarks/memory.py --model=llm --checkpoint=pretrained/llm_tiny \
      --batch_size=4 --seq_len=128 [--config.model.dtype=bfloat16]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import functools
import json
import os
import platform
import resource
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from ml_collections import config_flags

from jackpot_jax.run import parallel
from jackpot_jax.search import lm_steps, optim, scores as scores_lib, sparsity, steps

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 32, "input height and width")
flags.DEFINE_integer("channels", 3, "input channels")
flags.DEFINE_integer("steps", 3, "steps each kind runs (the first compiles)")
flags.DEFINE_enum("kind", None, ["search", "dense"], "measure one kind in this process "
                  "(the parent runs each in a child)")
flags.DEFINE_string("checkpoint", None, "--model=llm: a Hugging Face decoder folder")
flags.DEFINE_integer("seq_len", 128, "--model=llm: tokens per sequence")

_KINDS = ("search", "dense")
LLM = "llm"


def _tree_bytes(tree) -> int:
  return int(sum(x.size * x.dtype.itemsize for x in jax.tree.leaves(tree)))


def _peak_rss() -> int:
  return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024


def _compiled_bytes(jitted, *args) -> tuple[int | None, int | None]:
  """(bytes XLA's memory analysis attributes to one call of the compiled step, of which
  temporaries), or Nones where the backend does not analyse."""
  analysis = jitted.lower(*args).compile().memory_analysis()
  if analysis is None:
    return None, None
  return (int(analysis.argument_size_in_bytes + analysis.output_size_in_bytes
              + analysis.temp_size_in_bytes - analysis.alias_size_in_bytes),
          int(analysis.temp_size_in_bytes))


def _settings():
  """The benchmark's config; a language model's plan pools its decoder-block projections
  (hidden dense layers) unless --config.search.hidden_dense says otherwise."""
  config = common.settings()
  if config.model.name != LLM:
    return config
  if not FLAGS.checkpoint:
    raise ValueError("--model=llm needs --checkpoint=<a Hugging Face decoder folder>")
  if "search.hidden_dense" not in config_flags.get_override_values(FLAGS["config"]):
    config.search.hidden_dense = "plan"
  return config


def _measure(kind: str) -> dict:
  """Builds and runs one kind in this process; returns its figures."""
  jax.devices()
  baseline = _peak_rss()
  config = _settings()
  if config.model.name == LLM:
    return _measure_llm(kind, config, baseline)
  shape = (config.search.batch_size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=shape).astype(np.float32)).astype(
               parallel.IMAGE_DTYPES[config.model.dtype]),
           "label": jnp.asarray(rng.integers(0, config.model.num_classes, shape[0]),
                                jnp.int32)}
  if kind == "search":
    bench = common.random_search(config, shape[1:], jax.random.PRNGKey(0))
    step, frozen, state = jax.jit(bench.step, donate_argnums=(1,)), bench.params, bench.state
  else:
    model, _, params, batch_stats = common.random_network(config, shape[1:],
                                                          jax.random.PRNGKey(0))
    step, state = common.dense_training(model, params, batch_stats,
                                        optim.make_optimizer(config.search, 1000))
    del params, batch_stats  # dense training trains its own copy; keep only that one
    frozen = None
  figures, _ = _run_steps(step, frozen, state, batch, baseline)
  return figures


def _run_steps(step, frozen, state, batch, baseline: int) -> tuple[dict, int | None]:
  """Runs `--steps` steps; returns (the figures every kind reports, XLA's temporaries)."""
  compiled, temp = _compiled_bytes(step, frozen, state, batch)
  state_bytes = _tree_bytes(state)
  for _ in range(FLAGS.steps):
    state, metrics = step(frozen, state, batch)
  jax.block_until_ready(metrics)
  stats = jax.devices()[0].memory_stats() or {}
  return {"peak_rss_bytes": _peak_rss(), "added_rss_bytes": _peak_rss() - baseline,
          "device_peak_bytes": stats.get("peak_bytes_in_use"),
          "compiled_bytes": compiled, "state_bytes": state_bytes,
          "frozen_bytes": _tree_bytes(frozen) if frozen is not None else 0}, temp


def _decoder(config):
  """(model, params, hf_config, plan) of --checkpoint, its params in config.model.dtype."""
  from jackpot_jax.pytorch import hf_decoders  # imports torch, which the image kinds skip

  model, params, hf_config = hf_decoders.import_hf_decoder(FLAGS.checkpoint,
                                                           dtype=config.model.dtype)
  plan = sparsity.plan_for(params, config.search, hf_decoders.decoder_spec(hf_config))
  return model, params, hf_config, plan


def _measure_llm(kind: str, config, baseline: int) -> dict:
  """`_measure` for --model=llm: a decoder's search or dense training on random tokens."""
  model, params, hf_config, plan = _decoder(config)
  tokens = np.random.default_rng(0).integers(0, hf_config["vocab_size"],
                                             (config.search.batch_size, FLAGS.seq_len))
  batch = {"tokens": jnp.asarray(tokens, jnp.int32)}
  tx = optim.make_optimizer(config.search, 1000)
  if kind == "search":
    keep_counts = plan.keep_counts()
    scores = scores_lib.init_scores(params, plan, config.search.score_init,
                                    jax.random.PRNGKey(0))
    state = steps.init_search_state(scores, keep_counts, {}, tx)
    step = jax.jit(functools.partial(lm_steps.lm_search_step, model=model,
                                     keep_counts=keep_counts, tx=tx), donate_argnums=(1,))
    frozen, trained = params, sum(layer.size for layer in plan.masked_layers)
  else:
    state = steps.TuneState(step=jnp.zeros((), jnp.int32), params=params,
                            opt_state=tx.init(params), batch_stats={})
    step = jax.jit(functools.partial(lm_steps.lm_train_step, model=model, tx=tx),
                   donate_argnums=(1,))
    frozen, trained = None, sum(x.size for x in jax.tree.leaves(params))
    del params  # dense training trains the imported weights themselves
  figures, temp = _run_steps(step, frozen, state, batch, baseline)
  return {**figures, "compiled_temp_bytes": temp, "trained_params": int(trained),
          "state_bytes_per_param": round(figures["state_bytes"] / trained, 4)}


def _child(kind: str) -> dict:
  """Runs this script for one kind in a fresh process; returns its JSON line."""
  args = [a for a in sys.argv[1:] if not a.startswith("--kind")]
  done = subprocess.run([sys.executable, os.path.abspath(__file__), f"--kind={kind}", *args],
                        capture_output=True, text=True, check=False)
  if done.returncode != 0:
    raise RuntimeError(f"the {kind} child failed: {done.stderr.strip().splitlines()[-1:]}")
  return json.loads(done.stdout.strip().splitlines()[-1])


def _gib(value) -> str:
  return "n/a" if value is None else f"{value / 2**30:7.3f} GiB"


def _llm_description(config, measured: dict) -> dict:
  """What an --model=llm run measured: the folder, its sizes (as the children counted
  them: dense trains every parameter, the search scores the masked ones) and the search
  settings."""
  hf_config = json.loads((Path(FLAGS.checkpoint) / "config.json").read_text())
  return {"model": LLM, "checkpoint": FLAGS.checkpoint, "model_type": hf_config["model_type"],
          "batch_size": config.search.batch_size, "seq_len": FLAGS.seq_len,
          "params": measured["dense"]["trained_params"],
          "masked_params": measured["search"]["trained_params"],
          "pattern": config.search.pattern, "sparsity": config.search.sparsity,
          "optimizer": config.search.optimizer, "momentum": config.search.momentum}


def main(argv):
  del argv
  if FLAGS.kind is not None:
    print(json.dumps(_measure(FLAGS.kind)))
    return
  config = _settings()
  measured = {kind: _child(kind) for kind in _KINDS}
  described = (_llm_description(config, measured) if config.model.name == LLM else
               {"model": config.model.name, "batch_size": config.search.batch_size,
                "input": [FLAGS.image_size, FLAGS.image_size, FLAGS.channels]})
  result = {**described,
            "dtype": config.model.dtype, "backend": jax.default_backend(),
            "device": jax.devices()[0].device_kind,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores", **measured}
  for key in ("peak_rss_bytes", "added_rss_bytes", "device_peak_bytes", "compiled_bytes"):
    search, dense = measured["search"][key], measured["dense"][key]
    result[f"search_over_dense_{key.removesuffix('_bytes')}"] = (
        None if not search or not dense else round(search / dense, 4))
  for kind in _KINDS:
    m = measured[kind]
    print(f"{kind:>6}: peak RSS {_gib(m['peak_rss_bytes'])} ({_gib(m['added_rss_bytes'])} "
          f"above the runtime's), device peak "
          f"{_gib(m['device_peak_bytes'])}, compiled step {_gib(m['compiled_bytes'])}, "
          f"trained state {_gib(m['state_bytes'])}, frozen {_gib(m['frozen_bytes'])}"
          + (f", {m['state_bytes_per_param']} state bytes per trained parameter"
             if "state_bytes_per_param" in m else ""))
  print(f"search/dense: peak RSS {result['search_over_dense_peak_rss']} (above the runtime's "
        f"{result['search_over_dense_added_rss']}), device peak "
        f"{result['search_over_dense_device_peak']}, compiled "
        f"{result['search_over_dense_compiled']}")
  print(json.dumps(result))


if __name__ == "__main__":
  common.main(main)
