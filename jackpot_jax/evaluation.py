"""Evaluation: top-1 accuracy over the eval split, and the dense and magnitude baselines."""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any, Iterable

import jax
import jax.numpy as jnp

from jackpot_jax import data as data_lib, dispatch, fileio, parallel, steps
from jackpot_jax import workdir as workdir_lib
from jackpot_jax.run_setup import SearchSetup, magnitude_masks

BASELINE_FILE = "baseline.json"


class Evaluator:
  """Top-1 accuracy over the whole eval split, with one compiled eval step."""

  def __init__(self, setup: SearchSetup):
    self.setup = setup
    self.step = jax.jit(functools.partial(steps.eval_step, model=setup.model))

  def batches(self) -> Iterable[dict]:
    config = self.setup.config
    # Rounded up to a multiple of the device count; padded examples carry weight 0.
    devices = self.setup.mesh.devices.size
    batch_size = -(-config.eval.batch_size // devices) * devices
    return data_lib.make_eval_batches(
        self.setup.spec.data, split=config.data.eval_split, batch_size=batch_size,
        process_index=jax.process_index(), process_count=jax.process_count())

  def accuracy(self, params: Any, batch_stats: Any, masks: Any | None) -> float:
    """Accuracy of W * masks (dense W when `masks` is None) with these BN statistics."""
    evaluated = {"batch_stats": batch_stats, "masks": masks}
    totals = None
    # Closed on every way out, so no input thread outlives a failed evaluation.
    window = dispatch.DispatchWindow()
    with contextlib.closing(self.batches()) as batches:
      for batch in batches:
        sums = self.step(params, evaluated, parallel.put_batch(batch, self.setup.mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        window.admit(totals)
    totals = jax.device_get(totals)
    return float(totals["correct"] / max(totals["count"], 1.0))


def _baseline_inputs(setup: SearchSetup) -> dict:
  """The config fields the dense and magnitude-pruned accuracies depend on."""
  resolved = workdir_lib.config_to_json(setup.config)
  return {"model": resolved["model"],
          "data": {k: v for k, v in resolved["data"].items() if k != "prefetch"},
          "plan": {k: resolved["search"][k] for k in ("sparsity", "sparsity_plan", "classifier",
                                                      "first_layer", "layer_overrides")}}


def baseline(setup: SearchSetup, evaluator: Evaluator, workdir: Path) -> dict:
  """Dense and magnitude-pruned accuracy, computed once per workdir and inputs.

  The inputs are stored with the accuracies so that a run resumed with --force under
  another checkpoint, dataset or plan does not report a stale baseline.
  """
  path = workdir / BASELINE_FILE
  inputs = _baseline_inputs(setup)
  if path.exists():
    saved = json.loads(path.read_text())
    if saved.get("inputs") == inputs:
      return saved
  result = {"dense": evaluator.accuracy(setup.params, setup.batch_stats, None),
            "magnitude": evaluator.accuracy(setup.params, setup.batch_stats,
                                            magnitude_masks(setup)),
            "inputs": inputs}
  if jax.process_index() == 0:
    fileio.write_json(path, result)
  return result
