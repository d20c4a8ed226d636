"""The one training loop: restore, step, log, evaluate, guard, checkpoint.

The search and the "+T" tuning stage both run here; a `Stage` says how they differ (the
step function, what it keeps frozen, its first state, its data order and its
evaluations). The loop owns everything it opens and closes it on every way out, errors
included: no checkpoint save, input thread or event file outlives `run_stage`.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import logging
import time
from pathlib import Path
from typing import Any, Callable, Iterator

import jax
import jax.numpy as jnp

from jackpot_jax import data as data_lib, dispatch
from jackpot_jax.bounded_cache import BoundedCache
from jackpot_jax.data.text import TextInfo
from jackpot_jax.run import checkpointing, nonfinite, parallel
from jackpot_jax.run import profiling, progress
from jackpot_jax.run.spec import RunSpec


@dataclasses.dataclass(frozen=True)
class Evaluation:
  """Evaluations during a stage: of its first state (step 0, on a fresh start), every
  `every_steps` steps and at the last planned one.

  `measure(state)` returns (the figure, scalars for TensorBoard): held-out accuracy for an
  image search, held-out perplexity (`lower_is_better`) for a language model's; each
  evaluation's figure goes into the history under `metric`. Reaching `goal` at a step
  after the first ends the stage early, and a rerun does not go on. With `keep`, the
  stage selects: `keep(state)` of the best-measured state (ties go to the later one, the
  first state included) is checkpointed and returned beside the last state. States before
  step `first_selectable` (a sparsity ramp's, denser than the plan) are measured and
  recorded, but neither selected nor compared with the goal.
  """

  every_steps: int
  measure: Callable[[Any], tuple[float, dict]]
  goal: float | None = None
  keep: Callable[[Any], Any] | None = None
  metric: str = "jackpot_accuracy"
  lower_is_better: bool = False
  selected_key: str = "accuracy"  # meta["selected"]'s name for the figure
  first_selectable: int = 0

  def at_least_as_good(self, value: float, than: float) -> bool:
    return value <= than if self.lower_is_better else value >= than

  def selects(self, step: int, value: float, best: float | None) -> bool:
    """Whether the evaluation of step `step` replaces the selected one (figure `best`,
    None before any)."""
    return (self.keep is not None and step >= self.first_selectable
            and (best is None or self.at_least_as_good(value, best)))

  def reaches_goal(self, step: int, value: float) -> bool:
    return (self.goal is not None and step >= self.first_selectable
            and self.at_least_as_good(value, self.goal))


@dataclasses.dataclass(frozen=True)
class Stage:
  """One trained stage of a run.

  `step(frozen, state, batch) -> (state, metrics)` is the pure step with its statics
  bound; the loop compiles it with the NaN/Inf guard, donating the state. With
  `first_steps` > 0, steps 1 to `first_steps` run `first_step` instead (a stage that
  begins differently, as the search's local stage), a second program of the same form.
  """

  name: str  # "search" or "tune": the config section, the log phase
  step: Callable
  frozen: Any
  fresh_state: Any
  checked: str  # what the guard names: "scores" or "tuned weights"
  checked_values: Callable[[Any], Any]
  checkpoint_dir: Path
  total_steps: int
  steps_per_epoch: int
  seed: int
  learning_rate: Callable[[int], float]
  evaluation: Evaluation | None = None
  profile_steps: tuple[int, int] | None = None
  first_step: Callable | None = None
  first_steps: int = 0


# Compiled steps kept for the later stages of the process (a sweep's or a ladder's runs, a
# test session's): a stage whose step (a partial of a module function, its statics
# compared by value), guard, mesh and shardings equal an earlier one's reuses its program
# rather than tracing and lowering it again. The oldest go beyond this many.
_compiled_steps = BoundedCache(8)


def _value_key(value: Any) -> Any:
  """A hashable key equal for equal values: partials by their function and arguments,
  containers by their structure and leaves, anything else by its own hash (a function's
  or an optax optimizer's is its identity). Raises TypeError for an unhashable leaf (an
  array)."""
  if isinstance(value, functools.partial):
    return ("partial", _value_key(value.func), tuple(_value_key(a) for a in value.args),
            tuple(sorted((k, _value_key(v)) for k, v in value.keywords.items())))
  if isinstance(value, (dict, list, tuple)) and not hasattr(value, "_fields"):
    leaves, treedef = jax.tree.flatten(value)
    return ("tree", treedef, tuple(_value_key(leaf) for leaf in leaves))
  hash(value)
  return value


def _compile(stage: Stage, step: Callable, mesh: Any, state_shardings: Any) -> Callable:
  """`step` with the NaN/Inf record of `nonfinite.track`, jitted; an equal earlier
  stage's program when the process has one (`_compiled_steps`)."""
  checked_values = stage.checked_values

  def guarded(frozen, state, batch, record):
    state, metrics = step(frozen, state, batch)
    record = nonfinite.track(record, state.step, metrics["loss"], checked_values(state))
    return state, metrics, record

  def build() -> Callable:
    replicated = parallel.replicated(mesh)
    return jax.jit(guarded, out_shardings=(state_shardings, replicated, replicated),
                   donate_argnums=(1,))

  try:
    key = _value_key((step, checked_values, mesh, state_shardings))
  except TypeError:  # something bound is an array: compiled for this stage alone
    return build()
  return _compiled_steps.get(key, build)


def _next_timed(batches: Iterator[dict]) -> tuple[dict, float]:
  """The next batch and the seconds the loop waited for it (the input-wait metric)."""
  began = time.perf_counter()
  batch = next(batches)
  return batch, time.perf_counter() - began


def run_stage(stage: Stage, spec: RunSpec, mesh: Any, workdir: Path,
              stop_after: int | None = None) -> tuple[Any, dict, Any]:
  """Runs (or resumes) `stage` to its last step and returns (state, meta, selected).

  Args:
    stop_after: stop after this global step (tests use it to simulate a crash); the
      checkpoint written there lets the same call resume.
  Returns:
    meta: wall_seconds, history (one record per evaluation, step 0 the first state),
      when the goal was reached goal_reached_at, and when the stage selects, selected
      ({step, accuracy} of the best evaluation so far).
    selected: `Evaluation.keep` of the state meta's selected names; None when the stage
      does not select (or has not evaluated yet).
  """
  config = spec.config
  section = config[stage.name]
  with contextlib.ExitStack() as opened:  # closed newest first, on every way out
    ckpts = opened.enter_context(checkpointing.SearchCheckpoints(
        stage.checkpoint_dir, config.checkpoint.keep, writer=True))
    shardings = parallel.config_shardings(stage.fresh_state, mesh, config.mesh)
    evaluation = stage.evaluation
    keep = None if evaluation is None else evaluation.keep
    restored = ckpts.restore_latest(
        parallel.abstract_arrays(stage.fresh_state, shardings),
        None if keep is None else parallel.abstract_arrays(keep(stage.fresh_state),
                                                           keep(shardings)))
    state, meta, selected = (stage.fresh_state, {}, None) if restored is None else restored
    meta = {"wall_seconds": 0.0, "history": [], **meta}  # older checkpoints lack some keys
    start = int(state.step)
    if restored is not None:
      logging.info("resuming the %s from step %d", stage.name, start)
    step_fn = _compile(stage, stage.step, mesh, shardings)
    first_fn = (_compile(stage, stage.first_step, mesh, shardings) if stage.first_steps
                else None)
    record = jax.device_put(nonfinite.ALL_FINITE, parallel.replicated(mesh))
    batches = opened.enter_context(contextlib.closing(data_lib.make_train_iterator(
        spec.data, batch_size=section.batch_size, seed=stage.seed, start_step=start,
        process_index=jax.process_index(), process_count=jax.process_count())))
    info = data_lib.load_dataset_info(spec.data)
    logger = opened.enter_context(progress.ProgressLogger(
        workdir, stage.total_steps, start, config.progress_bar, phase=stage.name,
        batch_size=section.batch_size, learning_rate=lambda s: stage.learning_rate(s - 1),
        header=progress.data_header(info),
        examples="sequences" if isinstance(info, TextInfo) else "images"))
    profiler = opened.enter_context(profiling.StepProfiler(workdir / "profile",
                                                           stage.profile_steps))
    last_saved, logged_at = ckpts.latest_step(), start
    end = stage.total_steps if stop_after is None else min(stop_after, stage.total_steps)
    if meta.get("goal_reached_at") is not None:
      end = start
    began = time.perf_counter() - meta["wall_seconds"]

    def evaluate(step: int) -> float:
      """Measures `state` as step `step`'s, records it, and keeps it if it is the best."""
      nonlocal selected
      accuracy, scalars = evaluation.measure(state)
      logger.scalars(step, scalars)
      meta["history"].append({"step": step, "epoch": step / stage.steps_per_epoch,
                              evaluation.metric: accuracy})
      best = meta.get("selected")
      if evaluation.selects(step, accuracy, None if best is None
                            else best[evaluation.selected_key]):
        meta["selected"] = {"step": step, evaluation.selected_key: accuracy}
        # A copy: the next step donates `state`, and with it these buffers.
        selected = jax.tree.map(jnp.copy, keep(state))
      return accuracy

    if evaluation is not None and restored is None:
      evaluate(0)  # the start, so that the search is measured against where it began
    window = dispatch.DispatchWindow()
    for step in range(start + 1, end + 1):
      batch, waited = _next_timed(batches)
      profiler.before(step)
      placed = parallel.put_batch(batch, mesh, config.model.dtype)
      run = first_fn if first_fn is not None and step <= stage.first_steps else step_fn
      state, metrics, record = run(stage.frozen, state, placed, record)
      window.admit(metrics)
      logger.record(metrics, waited)
      profiler.after(step, metrics)
      log_now = step % config.log_every_steps == 0 or step == end
      eval_now = evaluation is not None and (step % evaluation.every_steps == 0
                                             or step == stage.total_steps)
      save_now = step % config.checkpoint.every_steps == 0 or step == end
      if log_now or eval_now or save_now:
        nonfinite.check(record, stage.checked, stage.name, last_saved)
      if log_now:
        logger.step(step, step - logged_at)
        logged_at = step
      if eval_now:
        accuracy = evaluate(step)
        if evaluation.reaches_goal(step, accuracy):
          logging.info("accuracy %.4f reached the goal %.4f at step %d; the %s ends",
                       accuracy, evaluation.goal, step, stage.name)
          meta["goal_reached_at"] = step
          save_now = True
      if save_now:
        meta["wall_seconds"] = time.perf_counter() - began
        ckpts.save(step, state, dict(meta), selected)
        last_saved = step
      if meta.get("goal_reached_at") == step:
        break
    if start == end and restored is None:
      ckpts.save(0, state, dict(meta), selected)
    ckpts.wait()
  return state, meta, selected
