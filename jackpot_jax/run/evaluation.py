"""Evaluation: top-1 accuracy over a split, BN re-estimation, and the baselines.

The test split (`data.eval_split`) is measured at the end of a run only; evaluations
during the search, and anything they choose, use the held-out training images.
"""

from __future__ import annotations

import contextlib
import functools
import json
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax

from jackpot_jax import data as data_lib, dispatch, fileio
from jackpot_jax.run import parallel
from jackpot_jax.search import steps
from jackpot_jax.run import workdir as workdir_lib
from jackpot_jax.baselines import criteria
from jackpot_jax.run.setup import SearchSetup, magnitude_masks

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
    # One compiled eval step for every split and every evaluation of the run.
    self.accumulate = setup.program("eval_sums", lambda: dispatch.accumulator(
        functools.partial(steps.eval_step, model=setup.model)))

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
    # Closed on every way out, so no input thread outlives a failed evaluation.
    with contextlib.closing(self.batches()) as batches:
      dtype = self.setup.config.model.dtype
      placed = (parallel.put_batch(batch, self.setup.mesh, dtype) for batch in batches)
      totals, _ = dispatch.sum_over_batches(self.accumulate, placed, params, evaluated)
    return float(totals["correct"] / max(totals["count"], 1.0))


def _whole_batches(setup: SearchSetup, images: int) -> int:
  """Whole search batches in `images` (at most one epoch, at least one unless 0)."""
  wanted = min(images, setup.data_info.num_train)
  return max(wanted // setup.config.search.batch_size, 1) if wanted else 0


def recalibration_batches(setup: SearchSetup) -> int:
  """Search batches the baselines' BN statistics are re-estimated on."""
  return _whole_batches(setup, setup.config.eval.recalibration_images)


def wanda_batches(setup: SearchSetup) -> int:
  """Search batches Wanda's activation norms are taken over: N:M runs only (Wanda's
  comparison groups are an output row's weights, which N:M groups are; an unstructured
  plan ranks whole layers)."""
  return _whole_batches(setup, setup.config.eval.wanda_images) if setup.plan.pattern else 0


@contextlib.contextmanager
def _search_batches(setup: SearchSetup, count: int) -> Iterator[Iterable[dict]]:
  """The search's first `count` batches (same seed, augmentation and batch size), placed
  on the mesh; the input pipeline is closed on the way out."""
  batches = data_lib.make_train_iterator(
      setup.spec.data, batch_size=setup.config.search.batch_size, seed=setup.config.search.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  with contextlib.closing(batches):
    dtype = setup.config.model.dtype
    yield (parallel.put_batch(next(batches), setup.mesh, dtype) for _ in range(count))


def recalibrated_batch_stats(setup: SearchSetup, masks: Any) -> Any:
  """BN running statistics of W * masks re-estimated on training images, nothing else
  changed: the mean over `recalibration_batches` of each batch's statistics.

  The batches are the search's first ones, so the baseline's statistics are estimated the
  way the jackpot's are, but as an exact average (PyTorch's momentum=None) rather than a
  running one.
  """
  statistics_sums = setup.program("batch_statistics_sums", lambda: dispatch.accumulator(
      functools.partial(steps.batch_statistics, model=setup.model)))
  with _search_batches(setup, recalibration_batches(setup)) as placed:
    return dispatch.mean_of_sums(statistics_sums, placed, setup.params,
                                 {"batch_stats": setup.batch_stats, "masks": masks})


def jackpot_batch_stats(setup: SearchSetup, state: Any) -> Any:
  """The BN statistics a search state's jackpot is evaluated and exported with: the
  running ones the search kept, or with search.bn_statistics=reestimated, statistics
  re-estimated for its masks as `recalibrated_batch_stats` does (deterministic, so the
  report, `evaluate` and `export` agree)."""
  if (setup.config.search.bn_statistics == "running"
      or not jax.tree.leaves(state.batch_stats)):
    return state.batch_stats
  return recalibrated_batch_stats(setup, state.masks)


def wanda_masks(setup: SearchSetup) -> Any:
  """Wanda's N:M mask (|w| * input column norm, Sun et al. 2023) over `wanda_batches`."""
  with _search_batches(setup, wanda_batches(setup)) as placed:
    return criteria.criterion_masks("wanda", model=setup.model, params=setup.params,
                                    batch_stats=setup.batch_stats, plan=setup.plan,
                                    batches=placed)


def _stale_and_recalibrated(setup: SearchSetup, evaluator: Evaluator,
                            masks: Any) -> tuple[float, float | None]:
  """A baseline mask's accuracy with the dense BN statistics, and after re-estimating them
  (None when eval.recalibration_images is 0 or the model has no BN statistics)."""
  stale = evaluator.accuracy(setup.params, setup.batch_stats, masks)
  if not (recalibration_batches(setup) and jax.tree.leaves(setup.batch_stats)):
    return stale, None
  return stale, evaluator.accuracy(setup.params, recalibrated_batch_stats(setup, masks), masks)


def _baseline_inputs(setup: SearchSetup) -> dict:
  """The config fields the baseline accuracies depend on."""
  resolved = workdir_lib.config_to_json(setup.config)
  return {"model": resolved["model"],
          "data": {k: v for k, v in resolved["data"].items() if k != "prefetch"},
          "plan": {k: resolved["search"][k] for k in ("sparsity", "sparsity_plan", "pattern",
                                                      "classifier", "first_layer",
                                                      "hidden_dense", "layer_overrides")},
          "wanda_images": resolved["eval"]["wanda_images"],
          "recalibration": {"images": resolved["eval"]["recalibration_images"],
                            **{k: resolved["search"][k] for k in ("batch_size", "seed")}}}


def baseline(setup: SearchSetup, evaluator: Evaluator, workdir: Path,
             holdout: Evaluator | None = None) -> dict:
  """Dense and magnitude-pruned accuracy on the test split, computed once per workdir
  and inputs: "magnitude" with the dense network's BN statistics (stale), and
  "magnitude_recalibrated" after `recalibrated_batch_stats` (None when
  eval.recalibration_images is 0 or the model has no BN statistics); with an N:M pattern,
  "wanda" and "wanda_recalibrated" the same way. With `holdout`, also
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
  magnitude, magnitude_recalibrated = _stale_and_recalibrated(setup, evaluator,
                                                              magnitude_masks(setup))
  result = {"dense": evaluator.accuracy(setup.params, setup.batch_stats, None),
            "magnitude": magnitude, "magnitude_recalibrated": magnitude_recalibrated,
            "recalibration_images": 0 if magnitude_recalibrated is None else
                                    recalibration_batches(setup) * setup.config.search.batch_size,
            "wanda": None, "wanda_recalibrated": None, "wanda_images": 0,
            "inputs": inputs}
  if wanda_batches(setup):
    result["wanda"], result["wanda_recalibrated"] = _stale_and_recalibrated(
        setup, evaluator, wanda_masks(setup))
    result["wanda_images"] = wanda_batches(setup) * setup.config.search.batch_size
  if holdout is not None:
    result["holdout"] = {"dense": holdout.accuracy(setup.params, setup.batch_stats, None)}
  if jax.process_index() == 0:
    fileio.write_json(path, result)
  return result
