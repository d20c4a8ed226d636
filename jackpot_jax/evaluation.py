"""Evaluation: top-1 accuracy over a split, BN re-estimation, and the baselines.

The test split (`data.eval_split`) is measured at the end of a run only; evaluations
during the search, and anything they choose, use the held-out training images.
"""

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
# The split of the training images held out of the search (data.holdout_images).
HOLDOUT = "holdout"


class Evaluator:
  """Top-1 accuracy over one whole split, with one compiled eval step.

  `split` is "holdout" (the training images held out of the search) or None for the
  configured evaluation split.
  """

  def __init__(self, setup: SearchSetup, split: str | None = None):
    self.setup = setup
    self.split = setup.config.data.eval_split if split is None else split
    self.step = jax.jit(functools.partial(steps.eval_step, model=setup.model))

  def batches(self) -> Iterable[dict]:
    config = self.setup.config
    # Rounded up to a multiple of the device count; padded examples carry weight 0.
    devices = self.setup.mesh.devices.size
    batch_size = -(-config.eval.batch_size // devices) * devices
    return data_lib.make_eval_batches(
        self.setup.spec.data, split=self.split, batch_size=batch_size,
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


def recalibration_batches(setup: SearchSetup) -> int:
  """Whole search batches in `eval.recalibration_images` (at most one epoch, at least one
  when the field is not 0)."""
  config = setup.config
  wanted = min(config.eval.recalibration_images, setup.data_info.num_train)
  return max(wanted // config.search.batch_size, 1) if wanted else 0


def recalibrated_batch_stats(setup: SearchSetup, masks: Any) -> Any:
  """BN running statistics of W * masks re-estimated on training images, nothing else
  changed: the mean over `recalibration_batches` of each batch's statistics.

  The batches are the search's first ones (same seed, augmentation and batch size), so
  the baseline's statistics are estimated the way the jackpot's are, but as an exact
  average (PyTorch's momentum=None) rather than a running one.
  """
  batches = data_lib.make_train_iterator(
      setup.spec.data, batch_size=setup.config.search.batch_size, seed=setup.config.search.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  with contextlib.closing(batches):
    placed = (parallel.put_batch(next(batches), setup.mesh)
              for _ in range(recalibration_batches(setup)))
    return dispatch.mean_over_batches(
        functools.partial(steps.batch_statistics, model=setup.model), placed, setup.params,
        {"batch_stats": setup.batch_stats, "masks": masks})


def _baseline_inputs(setup: SearchSetup) -> dict:
  """The config fields the baseline accuracies depend on."""
  resolved = workdir_lib.config_to_json(setup.config)
  return {"model": resolved["model"],
          "data": {k: v for k, v in resolved["data"].items() if k != "prefetch"},
          "plan": {k: resolved["search"][k] for k in ("sparsity", "sparsity_plan", "classifier",
                                                      "first_layer", "hidden_dense",
                                                      "layer_overrides")},
          "recalibration": {"images": resolved["eval"]["recalibration_images"],
                            **{k: resolved["search"][k] for k in ("batch_size", "seed")}}}


def baseline(setup: SearchSetup, evaluator: Evaluator, workdir: Path,
             holdout: Evaluator | None = None) -> dict:
  """Dense and magnitude-pruned accuracy on the test split, computed once per workdir
  and inputs: "magnitude" with the dense network's BN statistics (stale), and
  "magnitude_recalibrated" after `recalibrated_batch_stats` (None when
  eval.recalibration_images is 0 or the model has no BN statistics). With `holdout`, also
  {"holdout": {"dense": ...}}, the reference early stopping compares with.

  The inputs are stored with the accuracies so that a run resumed with --force under
  another checkpoint, dataset or plan does not report a stale baseline.
  """
  path = workdir / BASELINE_FILE
  inputs = _baseline_inputs(setup)
  if path.exists():
    saved = json.loads(path.read_text())
    if saved.get("inputs") == inputs and ("holdout" in saved or holdout is None):
      return saved
  magnitude = magnitude_masks(setup)
  recalibrated = None
  if recalibration_batches(setup) and jax.tree.leaves(setup.batch_stats):
    recalibrated = evaluator.accuracy(setup.params,
                                      recalibrated_batch_stats(setup, magnitude), magnitude)
  result = {"dense": evaluator.accuracy(setup.params, setup.batch_stats, None),
            "magnitude": evaluator.accuracy(setup.params, setup.batch_stats, magnitude),
            "magnitude_recalibrated": recalibrated,
            "recalibration_images": 0 if recalibrated is None else
                                    recalibration_batches(setup) * setup.config.search.batch_size,
            "inputs": inputs}
  if holdout is not None:
    result["holdout"] = {"dense": holdout.accuracy(setup.params, setup.batch_stats, None)}
  if jax.process_index() == 0:
    fileio.write_json(path, result)
  return result
