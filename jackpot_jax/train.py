"""The main job: convert, plan, search, (tune), evaluate and report.

`search_and_evaluate(config, workdir)` is what the command line, the tests and notebooks
call. Resume order: a checkpoint in the workdir, else a fresh start from the pre-trained
PyTorch checkpoint named in the config.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import json
import logging
import os
import time
from pathlib import Path
from typing import Any, Iterable, Iterator

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jackpot_jax import (checkpointing, data as data_lib, dispatch, fileio, masking, models,
                         optim, parallel, profiling, report as report_lib, scores as scores_lib,
                         sparsity, steps, validation)
from jackpot_jax import progress, workdir as workdir_lib
from jackpot_jax.errors import NonFiniteError
from jackpot_jax.interop import import_torch

@dataclasses.dataclass
class SearchSetup:
  """Everything derived from the config and the pre-trained checkpoint, before any step."""

  config: ml_collections.ConfigDict
  spec: models.ModelSpec
  model: Any
  imported: Any
  params: Any
  batch_stats: Any
  plan: sparsity.SparsityPlan
  keep_counts: Any
  data_info: Any
  mesh: Any
  steps_per_epoch: int
  total_steps: int
  tx: optax.GradientTransformation


def setup_search(config: ml_collections.ConfigDict) -> SearchSetup:
  """Imports the checkpoint, reads the data's shape, builds the plan and the optimizer.

  The config is checked against the data and the devices first, so that bad input
  fails before the checkpoint is loaded.
  """
  validation.check_config(config)
  spec = models.get_model_spec(config.model.name)
  data_info = data_lib.load_dataset_info(config.data)
  mesh = parallel.make_mesh(config.mesh.model, config.mesh.num_devices)
  validation.check_fit(config, data_info, mesh.devices.size)
  imported = import_torch(config.model.checkpoint, config.model.name, config.model.num_classes,
                          strict=config.model.strict,
                          model_kwargs=dict(config.model.kwargs))
  params = imported.variables["params"]
  plan = sparsity.build_sparsity_plan(
      params, sparsity=config.search.sparsity, method=config.search.sparsity_plan, spec=spec,
      classifier=config.search.classifier, first_layer=config.search.first_layer,
      overrides=dict(config.search.layer_overrides))
  steps_per_epoch = max(data_info.num_train // config.search.batch_size, 1)
  total_steps = max(int(round(config.search.num_epochs * steps_per_epoch)), 0)
  if total_steps == 0 and config.search.num_epochs > 0:
    raise ValueError("search.num_epochs is too small for one step; raise it")
  replicated = parallel.config_shardings(params, mesh, config.mesh)
  return SearchSetup(
      config=config, spec=spec, model=imported.model, imported=imported,
      params=jax.device_put(params, replicated),
      batch_stats=imported.variables.get("batch_stats", {}), plan=plan,
      keep_counts=plan.keep_counts(), data_info=data_info, mesh=mesh,
      steps_per_epoch=steps_per_epoch, total_steps=total_steps,
      tx=optim.make_optimizer(config.search, max(total_steps, 1)))


def initial_state(setup: SearchSetup) -> steps.SearchState:
  config = setup.config
  rng = jax.random.PRNGKey(config.search.seed)
  init_rng, state_rng = jax.random.split(rng)
  scores = scores_lib.init_scores(setup.params, setup.plan, config.search.score_init, init_rng)
  state = steps.init_search_state(scores, setup.keep_counts, setup.batch_stats, setup.tx,
                                  state_rng,
                                  scores_lib.ranks_by_magnitude(config.search.score_init))
  # A copy: the jitted step donates its state, and setup.batch_stats must outlive it.
  return jax.device_put(state, _state_shardings(setup, state), may_alias=False)


def _state_shardings(setup: SearchSetup, state: Any) -> Any:
  return parallel.config_shardings(state, setup.mesh, setup.config.mesh)


def magnitude_masks(setup: SearchSetup) -> Any:
  """The layer-wise magnitude-pruning mask at the plan's keep counts (the search's start)."""
  scores = scores_lib.init_scores(setup.params, setup.plan, "magnitude", jax.random.PRNGKey(0))
  return masking.compute_masks(scores, setup.keep_counts)


def _jit_search_step(setup: SearchSetup, state_shardings: Any):
  """The search step, also carrying the NaN/Inf record of `_track_nonfinite`."""
  config = setup.config
  step = functools.partial(steps.search_step, model=setup.model, keep_counts=setup.keep_counts,
                           tx=setup.tx, bn_mode=config.search.bn_mode,
                           label_smoothing=config.search.label_smoothing,
                           rank_by_magnitude=scores_lib.ranks_by_magnitude(
                               config.search.score_init))

  def guarded_step(params, state, batch, nonfinite):
    state, metrics = step(params, state, batch)
    return state, metrics, _track_nonfinite(nonfinite, state.step, metrics["loss"], state.scores)

  replicated = parallel.replicated(setup.mesh)
  return jax.jit(guarded_step, out_shardings=(state_shardings, replicated, replicated),
                 donate_argnums=(1,))


def _next_timed(batches: Iterator[dict]) -> tuple[dict, float]:
  """The next batch and the seconds the loop waited for it (the input-wait metric)."""
  began = time.perf_counter()
  batch = next(batches)
  return batch, time.perf_counter() - began


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
        config.data, split=config.data.eval_split, batch_size=batch_size,
        process_index=jax.process_index(), process_count=jax.process_count())

  def accuracy(self, params: Any, batch_stats: Any, masks: Any | None) -> float:
    totals = None
    # Closed on every way out, so no input thread outlives a failed evaluation.
    window = dispatch.DispatchWindow()
    with contextlib.closing(self.batches()) as batches:
      for batch in batches:
        sums = self.step(params, batch_stats, masks, parallel.put_batch(batch, self.setup.mesh))
        totals = sums if totals is None else jax.tree.map(jnp.add, totals, sums)
        window.admit(totals)
    totals = jax.device_get(totals)
    return float(totals["correct"] / max(totals["count"], 1.0))


# [first bad step, loss bad, values bad]: no step has been bad yet.
_ALL_FINITE = np.array([-1, 0, 0], np.int32)


def _track_nonfinite(record: jax.Array, step: jax.Array, loss: jax.Array,
                     values: Any) -> jax.Array:
  """`record` ([first bad step, loss bad, values bad]) updated with this step, on device.

  Runs inside the jitted step so that every step is checked without waiting for it on
  the host; the host reads the record only where it logs, evaluates or saves, and can
  still name the first bad step. `values` (scores or tuned weights) are checked leaf by
  leaf: their norm overflows float32 long before any of them does.
  """
  leaves = [x for x in jax.tree.leaves(values) if jnp.issubdtype(x.dtype, jnp.inexact)]
  values_finite = jnp.all(jnp.stack([jnp.all(jnp.isfinite(x)) for x in leaves]))
  bad = jnp.stack([~jnp.isfinite(loss), ~values_finite]).astype(jnp.int32)
  now = jnp.concatenate([jnp.reshape(step, (1,)).astype(jnp.int32), bad])
  return jnp.where((record[0] < 0) & jnp.any(bad > 0), now, record)


def _check_finite(record: jax.Array, values: str, section: str, last_saved: int | None) -> None:
  """Raises NonFiniteError naming the first step whose loss or `values` held NaN or Inf.

  Called before every save, so no checkpoint ever holds such a step.
  """
  step, loss_bad, values_bad = (int(v) for v in jax.device_get(record))
  if step < 0:
    return
  bad = " and ".join(name for name, flag in (("loss", loss_bad), (values, values_bad)) if flag)
  kept = "none saved yet" if last_saved is None else f"step {last_saved}"
  raise NonFiniteError(f"NaN or Inf in the {bad} at step {step}; stopped there, the last good "
                       f"checkpoint ({kept}) is kept; lower {section}.learning_rate and rerun "
                       "with --force to resume from it")


BASELINE_FILE = "baseline.json"


def _baseline_inputs(config: ml_collections.ConfigDict) -> dict:
  """The config fields the dense and magnitude-pruned accuracies depend on."""
  resolved = workdir_lib.config_to_json(config)
  return {"model": resolved["model"],
          "data": {k: v for k, v in resolved["data"].items() if k != "prefetch"},
          "plan": {k: resolved["search"][k] for k in ("sparsity", "sparsity_plan", "classifier",
                                                      "first_layer", "layer_overrides")}}


def _baseline(setup: SearchSetup, evaluator: Evaluator, workdir: Path) -> dict:
  """Dense and magnitude-pruned accuracy, computed once per workdir and inputs.

  The inputs are stored with the accuracies so that a run resumed with --force under
  another checkpoint, dataset or plan does not report a stale baseline.
  """
  path = workdir / BASELINE_FILE
  inputs = _baseline_inputs(setup.config)
  if path.exists():
    saved = json.loads(path.read_text())
    if saved.get("inputs") == inputs:
      return saved
  baseline = {"dense": evaluator.accuracy(setup.params, setup.batch_stats, None),
              "magnitude": evaluator.accuracy(setup.params, setup.batch_stats,
                                              magnitude_masks(setup)),
              "inputs": inputs}
  if jax.process_index() == 0:
    fileio.write_json(path, baseline)
  return baseline


def run_search(setup: SearchSetup, workdir: Path, evaluator: Evaluator,
               stop_after: int | None = None,
               goal_accuracy: float | None = None) -> tuple[steps.SearchState, dict]:
  """Runs (or resumes) the search to its last step and returns (state, meta).

  Args:
    stop_after: stop after this global step (tests use it to simulate a crash); the
      checkpoint written there lets the same call resume.
    goal_accuracy: end the search at the first evaluation with at least this jackpot
      accuracy; meta["goal_reached_at"] records the step, so a rerun does not go on.
  """
  config = setup.config
  # Everything opened below is closed on every way out, errors included, newest first:
  # no checkpoint save, input thread or event file outlives the call.
  with contextlib.ExitStack() as opened:
    ckpts = opened.enter_context(checkpointing.SearchCheckpoints(
        workdir / "checkpoints", config.checkpoint.keep, writer=True))
    fresh = initial_state(setup)
    shardings = _state_shardings(setup, fresh)
    restored = ckpts.restore_latest(parallel.abstract_arrays(fresh, shardings))
    state, meta = (fresh, {"wall_seconds": 0.0, "history": []}) if restored is None else restored
    start = int(state.step)
    if restored is not None:
      logging.info("resuming the search from step %d", start)
    search_step = _jit_search_step(setup, shardings)
    nonfinite = jax.device_put(_ALL_FINITE, parallel.replicated(setup.mesh))
    batches = opened.enter_context(contextlib.closing(data_lib.make_train_iterator(
        config.data, batch_size=config.search.batch_size, seed=config.search.seed,
        start_step=start, process_index=jax.process_index(),
        process_count=jax.process_count())))
    layer_names = {l.path: l.name for l in setup.plan.masked_layers}
    eval_every = (max(int(round(config.eval.every_epochs * setup.steps_per_epoch)), 1)
                  if config.eval.every_epochs else 0)
    schedule = optim.learning_rate_of(config.search, max(setup.total_steps, 1))
    logger = opened.enter_context(progress.ProgressLogger(
        workdir, setup.total_steps, start, config.progress_bar, phase="search",
        batch_size=config.search.batch_size, learning_rate=lambda s: schedule(s - 1)))
    profiler = opened.enter_context(profiling.StepProfiler(
        workdir / "profile", profiling.parse_profile_steps(config.profile_steps)))
    last_saved, logged_at = ckpts.latest_step(), start
    end = setup.total_steps if stop_after is None else min(stop_after, setup.total_steps)
    if meta.get("goal_reached_at") is not None:
      end = start
    began = time.perf_counter() - meta["wall_seconds"]
    window = dispatch.DispatchWindow()
    for step in range(start + 1, end + 1):
      batch, waited = _next_timed(batches)
      profiler.before(step)
      state, metrics, nonfinite = search_step(
          setup.params, state, parallel.put_batch(batch, setup.mesh), nonfinite)
      window.admit(metrics)
      logger.record(metrics, waited)
      profiler.after(step, metrics)
      log_now = step % config.log_every_steps == 0 or step == end
      eval_now = eval_every and (step % eval_every == 0 or step == setup.total_steps)
      save_now = step % config.checkpoint.every_steps == 0 or step == end
      if log_now or eval_now or save_now:
        _check_finite(nonfinite, "scores", "search", last_saved)
      if log_now:
        logger.step(step, step - logged_at)
        logged_at = step
      if eval_now:
        jackpot = evaluator.accuracy(setup.params, state.batch_stats, state.masks)
        counted = sparsity.count_sparsity(setup.params, state.masks)
        logger.scalars(step, {"eval/jackpot_accuracy": jackpot, "sparsity/conv": counted["conv"]})
        logger.scalars(step, {f"sparsity_per_layer/{layer_names.get(p, p)}": v
                              for p, v in counted["per_layer"].items() if p in layer_names.values()})
        meta["history"].append({"step": step, "epoch": step / setup.steps_per_epoch,
                                "jackpot_accuracy": jackpot})
        if goal_accuracy is not None and jackpot >= goal_accuracy:
          meta["goal_reached_at"] = step
          save_now = True
      if save_now:
        meta["wall_seconds"] = time.perf_counter() - began
        ckpts.save(step, state, dict(meta))
        last_saved = step
      if meta.get("goal_reached_at") == step:
        logging.info("jackpot accuracy %.4f reached the goal %.4f at step %d; search ends",
                     jackpot, goal_accuracy, step)
        break
    if start == end and restored is None:
      ckpts.save(0, state, dict(meta))
    ckpts.wait()
  meta["wall_seconds"] = meta.get("wall_seconds", 0.0)
  return state, meta


def fresh_tune_state(setup: SearchSetup, tx: optax.GradientTransformation,
                     batch_stats: Any) -> steps.TuneState:
  """The "+T" stage's first state: the pre-trained weights and a fresh optimizer state."""
  return steps.TuneState(step=jnp.zeros((), jnp.int32), params=setup.params,
                         opt_state=tx.init(setup.params), batch_stats=batch_stats)


def run_tuning(setup: SearchSetup, workdir: Path, masks: Any,
               batch_stats: Any) -> steps.TuneState | None:
  """The optional "+T" stage: weights fine-tuned with the searched mask fixed."""
  config = setup.config
  tune_steps = int(round(config.tune.num_epochs * max(
      setup.data_info.num_train // config.tune.batch_size, 1)))
  if tune_steps <= 0:
    return None
  parallel.check_batch_size(config.tune.batch_size, setup.mesh)
  tx = optim.make_optimizer(config.tune, tune_steps)
  fresh = fresh_tune_state(setup, tx, batch_stats)
  shardings = parallel.config_shardings(fresh, setup.mesh, config.mesh)
  # A copy: the jitted step donates its state, and the pre-trained weights must outlive it.
  fresh = jax.device_put(fresh, shardings, may_alias=False)
  replicated = parallel.replicated(setup.mesh)
  step_fn = functools.partial(steps.tune_step, model=setup.model, tx=tx,
                              label_smoothing=config.tune.label_smoothing)

  def guarded_step(state, batch, masks, nonfinite):
    state, metrics = step_fn(state, batch, masks)
    return state, metrics, _track_nonfinite(nonfinite, state.step, metrics["loss"], state.params)

  tune_step = jax.jit(guarded_step, out_shardings=(shardings, replicated, replicated),
                      donate_argnums=(0,))
  # As in run_search: closed on every way out.
  with contextlib.ExitStack() as opened:
    ckpts = opened.enter_context(checkpointing.SearchCheckpoints(
        workdir / "tune_checkpoints", config.checkpoint.keep, writer=True))
    restored = ckpts.restore_latest(parallel.abstract_arrays(fresh, shardings))
    state = fresh if restored is None else restored[0]
    nonfinite = jax.device_put(_ALL_FINITE, replicated)
    batches = opened.enter_context(contextlib.closing(data_lib.make_train_iterator(
        config.data, batch_size=config.tune.batch_size, seed=config.search.seed + 1,
        start_step=int(state.step), process_index=jax.process_index(),
        process_count=jax.process_count())))
    schedule = optim.learning_rate_of(config.tune, tune_steps)
    logger = opened.enter_context(progress.ProgressLogger(
        workdir, tune_steps, int(state.step), config.progress_bar, phase="tune",
        batch_size=config.tune.batch_size, learning_rate=lambda s: schedule(s - 1)))
    last_saved, logged_at = ckpts.latest_step(), int(state.step)
    window = dispatch.DispatchWindow()
    for step in range(int(state.step) + 1, tune_steps + 1):
      batch, waited = _next_timed(batches)
      state, metrics, nonfinite = tune_step(state, parallel.put_batch(batch, setup.mesh), masks,
                                            nonfinite)
      window.admit(metrics)
      logger.record(metrics, waited)
      log_now = step % config.log_every_steps == 0 or step == tune_steps
      save_now = step % config.checkpoint.every_steps == 0 or step == tune_steps
      if log_now or save_now:
        _check_finite(nonfinite, "tuned weights", "tune", last_saved)
      if log_now:
        logger.step(step, step - logged_at)
        logged_at = step
      if save_now:
        ckpts.save(step, state, {})
        last_saved = step
    ckpts.wait()
  return state


def build_report(setup: SearchSetup, state: steps.SearchState, meta: dict, baseline: dict,
                 jackpot: float, tuned: float | None) -> dict:
  """report.json's content; the keys named in the main-job issue are a contract."""
  config = setup.config
  counted = sparsity.count_sparsity(setup.params, state.masks)
  step = int(state.step)
  return {
      "model": config.model.name,
      "dataset": config.data.name,
      "checkpoint": str(config.model.checkpoint),
      "target_sparsity": float(config.search.sparsity),
      "sparsity": counted,
      "accuracy": {"dense": baseline["dense"], "magnitude": baseline["magnitude"],
                   "jackpot": jackpot, "tuned": tuned},
      "search": {"steps": step, "epochs": step / setup.steps_per_epoch,
                 "wall_seconds": float(meta.get("wall_seconds", 0.0)),
                 "score_init": config.search.score_init,
                 "sparsity_plan": config.search.sparsity_plan,
                 "bn_mode": config.search.bn_mode, "batch_size": config.search.batch_size,
                 "planned_steps": setup.total_steps,
                 "goal_reached_at": meta.get("goal_reached_at"),
                 "history": meta.get("history", [])},
      "layers": {l.name: {"shape": list(l.shape), "kind": l.kind,
                          "kept": setup.plan.keep_count(l), "size": l.size}
                 for l in setup.plan.layers},
      "source_sha256": setup.imported.source_sha256,
      "devices": {"count": jax.device_count(), "platform": jax.default_backend(),
                  "processes": jax.process_count()},
  }


def _evaluate_and_report(setup: SearchSetup, workdir: Path, evaluator: Evaluator,
                         state: steps.SearchState, meta: dict) -> dict:
  baseline = _baseline(setup, evaluator, workdir)
  jackpot = evaluator.accuracy(setup.params, state.batch_stats, state.masks)
  tune_state = run_tuning(setup, workdir, state.masks, state.batch_stats)
  tuned = (None if tune_state is None else
           evaluator.accuracy(tune_state.params, tune_state.batch_stats, state.masks))
  report = build_report(setup, state, meta, baseline, jackpot, tuned)
  if jax.process_index() == 0:
    report_lib.write_reports(workdir, report)
  return report


def search_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                        force: bool = False, stop_after: int | None = None) -> dict:
  """The `search` command: returns the report (also written to workdir/report.{json,md})."""
  workdir = workdir_lib.prepare_workdir(config, workdir, force=force)
  setup = setup_search(config)
  workdir_lib.save_workdir_config(config, workdir)
  evaluator = Evaluator(setup)
  baseline = _baseline(setup, evaluator, workdir)
  tolerance = config.eval.stop_within_dense
  state, meta = run_search(setup, workdir, evaluator, stop_after=stop_after,
                           goal_accuracy=baseline["dense"] - tolerance if tolerance > 0 else None)
  if int(state.step) < setup.total_steps and meta.get("goal_reached_at") is None:
    return {"stopped_at": int(state.step)}
  return _evaluate_and_report(setup, workdir, evaluator, state, meta)


def restore_search_state(setup: SearchSetup, workdir: Path) -> tuple[steps.SearchState, dict]:
  """The latest search checkpoint of a workdir, or a one-line error when it has none."""
  fresh = initial_state(setup)
  shardings = _state_shardings(setup, fresh)
  with checkpointing.SearchCheckpoints(workdir / "checkpoints",
                                      setup.config.checkpoint.keep) as ckpts:
    restored = ckpts.restore_latest(parallel.abstract_arrays(fresh, shardings))
  if restored is None:
    raise ValueError(f"{workdir} holds no search checkpoint; run `search` first")
  return restored


def evaluate_workdir(workdir: str | os.PathLike) -> dict:
  """The `evaluate` command: re-evaluates the latest checkpoint and rewrites the reports."""
  workdir = Path(workdir)
  setup = setup_search(workdir_lib.load_workdir_config(workdir))
  state, meta = restore_search_state(setup, workdir)
  return _evaluate_and_report(setup, workdir, Evaluator(setup), state, meta)
