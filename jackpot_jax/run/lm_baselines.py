"""`jackpot baselines`: a decoder language model's perplexity dense and under each one-shot
baseline (magnitude, Wanda, SparseGPT) at the config's target, reported.

  report = run_baselines(config_files.load_config("llm_tiny"), "workdirs/llm_tiny_24")

Each baseline's masks are measured on the original weights; a baseline that also updates
the weights (SparseGPT) is measured a second time with them. Every input is checked before
the first pruning, each in one line (`lm_spec`, the text, the model's vocabulary); nothing
is written until every figure is in, then config.json, each method's masks (`lm_masks`, for
`jackpot export --format=hf --method=NAME`), report.json and report.md, each atomically.
"""

from __future__ import annotations

import dataclasses
import functools
import os
import platform
import time
from typing import Any, Callable

import jax
import ml_collections

from jackpot_jax.baselines.llm_oneshot import prune_decoder
from jackpot_jax.data import text
from jackpot_jax.pytorch.hf_decoders import decoder_spec, import_hf_decoder
from jackpot_jax.run import (compilation_cache, lm_masks, lm_report, lm_spec, parallel,
                             perplexity as perplexity_lib, report as report_lib,
                             workdir as workdir_lib)
from jackpot_jax.run.lm_spec import BaselinesSpec

CALIBRATION_SPLIT = "search"


def timed(compute: Callable[[], Any]) -> tuple[Any, float]:
  """compute()'s value and the wall seconds until its arrays were ready."""
  start = time.perf_counter()
  value = compute()
  jax.block_until_ready(value)
  return value, time.perf_counter() - start


def calibration_batch_size(batch_size: int, devices: int) -> int:
  """baselines.batch_size, checked against the mesh: each pass splits it over every device."""
  if batch_size % devices:
    raise ValueError(f"baselines.batch_size={batch_size} is not divisible by the {devices} "
                     f"devices; choose a multiple of {devices} (dividing "
                     "baselines.calibration_sequences) or set mesh.num_devices")
  return batch_size


def environment(load_at_start: float) -> dict:
  """The report's devices (run/report.py's keys and the device kind), machine and JAX."""
  return {"devices": {**report_lib.devices(), "kind": jax.devices()[0].device_kind},
          "machine": {"cpu": report_lib.cpu_name(), "cores": os.cpu_count(),
                      "architecture": platform.machine(),
                      "load_average": {"start": load_at_start, "end": os.getloadavg()[0]}},
          "jax_version": jax.__version__}


def measure_method(spec: BaselinesSpec, name: str, model, params, tokens,
                    measure: Callable[..., perplexity_lib.Perplexity], mesh,
                    batch_size: int) -> tuple[lm_report.MethodOutcome, Any]:
  """One baseline pruned at the target, counted, and measured on the original weights
  (and with its updated weights where it returns others); with its masks."""
  def prune():
    result = prune_decoder(name, model, params, spec.hf_config, tokens, spec.target,
                           mesh=mesh, batch_size=batch_size)
    return result.masks, result.params

  (masks, pruned_params), prune_seconds = timed(prune)
  seconds = {"prune": prune_seconds}
  mask_alone, seconds["perplexity"] = timed(lambda: measure(params, masks=masks))
  updated = None
  if pruned_params is not params:  # OneShotResult: the input params unless updated
    updated, seconds["perplexity_updated"] = timed(
        lambda: measure(pruned_params, masks=masks))
  masks = jax.device_get(masks)
  counted = lm_report.count_masks(params, masks, decoder_spec(spec.hf_config).maskable,
                                  spec.target)
  return lm_report.MethodOutcome(perplexity=mask_alone, updated=updated, counted=counted,
                                 seconds=seconds), masks


def calibration_description(spec: BaselinesSpec, tokens: Any, batch_size: int) -> dict:
  """The report's calibration: sequences, seq_len, tokens, seed, split and batch_size."""
  return {"sequences": int(tokens.shape[0]), "seq_len": spec.data.seq_len,
          "tokens": int(tokens.size), "seed": spec.config.baselines.seed,
          "split": CALIBRATION_SPLIT, "batch_size": batch_size}


@dataclasses.dataclass(frozen=True)
class Measured:
  """Dense perplexity and each method's outcome, as `measure_all` measured them."""

  dense: perplexity_lib.Perplexity
  dense_seconds: float
  outcomes: dict[str, lm_report.MethodOutcome]
  calibration: dict


def measure_all(spec: BaselinesSpec, methods: tuple[str, ...], model, params, mesh,
                each_masks: Callable[[str, Any], None]) -> Measured:
  """Dense perplexity, then each of `methods` pruned at the target and measured
  (`measure_method`), on baselines.calibration_sequences drawn by baselines.seed; each
  method's masks go to `each_masks(name, masks)` as soon as they are measured, so that a
  caller keeps only those it needs."""
  baselines = spec.config.baselines
  batch_size = calibration_batch_size(baselines.batch_size, mesh.devices.size)
  tokens = text.calibration_sequences(spec.data, baselines.calibration_sequences,
                                      seed=baselines.seed)
  measure = functools.partial(perplexity_lib.perplexity, model, data_config=spec.data,
                              batch_size=spec.config.eval.perplexity_batch_size, mesh=mesh)
  dense, dense_seconds = timed(lambda: measure(params))
  outcomes = {}
  for name in methods:
    outcomes[name], masks = measure_method(spec, name, model, params, tokens, measure, mesh,
                                           batch_size)
    each_masks(name, masks)
  return Measured(dense=dense, dense_seconds=dense_seconds, outcomes=outcomes,
                  calibration=calibration_description(spec, tokens, batch_size))


def run_baselines(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                  force: bool = False) -> dict:
  """The `baselines` command: returns the report, also written to workdir/report.json
  and report.md beside the resolved config.json.

  Args:
    force: reuse a workdir whose saved config differs (as `search --force`).
  """
  load_at_start, started = os.getloadavg()[0], time.perf_counter()
  spec = lm_spec.resolve(config)
  workdir = workdir_lib.prepare_workdir(spec.config, workdir, force=force)
  compilation_cache.enable(spec.config.compilation_cache_dir)
  mesh = parallel.make_mesh(spec.config.mesh.model, spec.config.mesh.num_devices)
  calibration_batch_size(spec.config.baselines.batch_size, mesh.devices.size)
  text.text_info(spec.data)  # the text, its splits and the tokenizer, checked
  (model, params, hf_config), import_seconds = timed(lambda: import_hf_decoder(spec.folder))
  text.check_model_fit(spec.data, model.vocab_size, getattr(model, "n_positions", None))
  masks_of = {}  # written only once every figure is in
  measured = measure_all(spec, spec.methods, model, params, mesh, masks_of.__setitem__)
  report = lm_report.build_report(
      model=lm_report.describe_model(spec.config.model.name, hf_config, params,
                                     decoder_spec(hf_config).maskable),
      checkpoint=str(spec.folder), dataset=spec.data.name, target=spec.target,
      dense=measured.dense, outcomes=measured.outcomes,
      protocol=perplexity_lib.describe(spec.data), calibration=measured.calibration,
      seconds={"import": import_seconds, "dense": measured.dense_seconds,
               "total": time.perf_counter() - started},
      environment=environment(load_at_start))
  if jax.process_index() == 0:
    workdir_lib.save_workdir_config(spec.config, workdir)
    for name, masks in masks_of.items():
      lm_masks.save_masks(workdir, name, masks)
    lm_report.write_reports(workdir, report)
  return report
