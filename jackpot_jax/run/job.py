"""The main job: resolve the config, set up, search, (tune), evaluate and report.

`search_and_evaluate(config, workdir)` is what the command line, the experiments, the
tests and notebooks call. Resume order: a checkpoint in the workdir, else a fresh start
from the pre-trained PyTorch checkpoint named in the config.
"""

from __future__ import annotations

import functools
import os
from pathlib import Path
from typing import Any

import jax
import ml_collections

from jackpot_jax import fileio
from jackpot_jax.run import (checkpointing, evaluation, lm_search, lm_spec, loop, parallel,
                             report as report_lib, spec as spec_lib, workdir as workdir_lib)
from jackpot_jax.search import block_targets, optim, scores as scores_lib, sparsity, steps
from jackpot_jax.run.setup import (SearchSetup, initial_search_state, initial_tune_state,
                                   setup_search, teacher)

SEARCH_CHECKPOINTS, TUNE_CHECKPOINTS = "checkpoints", "tune_checkpoints"


def _jackpot_of(state: steps.SearchState) -> dict:
  """What the checkpoints keep of a search state the held-out selection picks: its masks
  and the BN statistics `evaluation.jackpot_batch_stats` evaluates them with."""
  return {"masks": state.masks, "batch_stats": state.batch_stats}


def with_selected_jackpot(setup: SearchSetup, state: steps.SearchState, meta: dict,
                          selected: Any) -> steps.SearchState:
  """`state` (the last one) carrying the jackpot search.selected_on chose: with
  holdout, the masks and BN statistics of the best evaluation (`selected`); with
  last_step, or for a run saved before selection existed, the last state's own."""
  if setup.spec.selected_on != "holdout" or selected is None or "selected" not in meta:
    return state
  return state.replace(masks=selected["masks"], batch_stats=selected["batch_stats"])


def search_stage(setup: SearchSetup, workdir: Path, holdout: evaluation.Evaluator | None,
                 goal_accuracy: float | None = None) -> loop.Stage:
  """The mask search: scores trained over the frozen pre-trained weights, evaluated (and
  stopped at `goal_accuracy`) on the held-out training images only; with
  search.selected_on=holdout its best evaluation is kept as the jackpot."""
  config = setup.config
  rank_by_magnitude = scores_lib.ranks_by_magnitude(config.search.score_init)
  layer_names = {l.path: l.name for l in setup.plan.masked_layers}

  def measure(state) -> tuple[float, dict]:
    jackpot = holdout.accuracy(setup.params, evaluation.jackpot_batch_stats(setup, state),
                               state.masks)
    counted = sparsity.count_sparsity(setup.params, state.masks, setup.spec.model.maskable)
    scalars = {"holdout/jackpot_accuracy": jackpot, "sparsity/conv": counted["conv"]}
    scalars.update({f"sparsity_per_layer/{layer_names.get(p, p)}": v
                    for p, v in counted["per_layer"].items() if p in layer_names.values()})
    return jackpot, scalars

  search = config.search
  statics = dict(model=setup.model, keep_counts=setup.keep_counts, tx=setup.optimizer("search"),
                 bn_mode=search.bn_mode, label_smoothing=search.label_smoothing,
                 rank_by_magnitude=rank_by_magnitude, bn_momentum=search.bn_momentum,
                 keep_ramp=setup.keep_ramp, flip_cap=setup.flip_cap,
                 flips_per_layer=search.flips_per_layer)
  local_steps, local_step = setup.local_steps, None
  if search.distill_weight > 0 or block_targets.uses_blocks(search):
    # Only then does the step run the dense teacher too.
    step = functools.partial(
        steps.distill_search_step, distill_weight=search.distill_weight,
        distill_temperature=search.distill_temperature,
        feature_weight=search.feature_distill_weight,
        blocks=block_targets.targeted_blocks(search, setup.spec.model.feature_blocks),
        **statics)
    if local_steps:
      local_step = functools.partial(step, local=True)
    frozen = teacher(setup)
  else:
    step, frozen = functools.partial(steps.search_step, **statics), setup.params
  every = config.eval.every_epochs
  return loop.Stage(
      name="search", step=step, frozen=frozen, fresh_state=initial_search_state(setup),
      checked="scores",
      checked_values=steps.scores_of,
      checkpoint_dir=workdir / SEARCH_CHECKPOINTS, total_steps=setup.total_steps,
      steps_per_epoch=setup.steps_per_epoch, seed=config.search.seed,
      learning_rate=optim.learning_rate_of(config.search, max(setup.total_steps, 1)),
      evaluation=None if holdout is None else loop.Evaluation(
          every_steps=max(int(round(every * setup.steps_per_epoch)), 1), measure=measure,
          goal=goal_accuracy,
          keep=_jackpot_of if setup.spec.selected_on == "holdout" else None,
          # A mask before the ramp's end keeps more than the plan: never the jackpot.
          first_selectable=0 if setup.keep_ramp is None else setup.keep_ramp.steps),
      profile_steps=setup.spec.profile_steps, first_step=local_step, first_steps=local_steps)


def tune_stage(setup: SearchSetup, workdir: Path, masks: Any, batch_stats: Any) -> loop.Stage:
  """The optional "+T" stage: weights fine-tuned with the searched mask fixed."""
  config = setup.config
  total = setup.stage_steps("tune")
  return loop.Stage(
      name="tune",
      step=functools.partial(steps.tune_step, model=setup.model, tx=setup.optimizer("tune"),
                             label_smoothing=config.tune.label_smoothing),
      frozen=masks, fresh_state=initial_tune_state(setup, batch_stats),
      checked="tuned weights", checked_values=steps.params_of,
      checkpoint_dir=workdir / TUNE_CHECKPOINTS, total_steps=total,
      steps_per_epoch=setup.epoch_steps("tune"), seed=config.search.seed + 1,
      learning_rate=optim.learning_rate_of(config.tune, max(total, 1)))


def _tune_and_report(setup: SearchSetup, workdir: Path, evaluator: evaluation.Evaluator,
                     state: steps.SearchState, meta: dict, baseline: dict) -> dict:
  """The jackpot's accuracy, the optional tuning stage, and report.{json,md}."""
  jackpot = evaluator.accuracy(setup.params, state.batch_stats, state.masks)
  tuned = None
  if setup.stage_steps("tune") > 0:
    parallel.check_batch_size(setup.config.tune.batch_size, setup.mesh)
    tuned_state, _, _ = loop.run_stage(tune_stage(setup, workdir, state.masks, state.batch_stats),
                                    setup.spec, setup.mesh, workdir)
    tuned = evaluator.accuracy(tuned_state.params, tuned_state.batch_stats, state.masks)
  report = report_lib.build_report(setup, state, meta, baseline, jackpot, tuned)
  if jax.process_index() == 0:
    report_lib.write_reports(workdir, report)
  return report


def holdout_evaluator(setup: SearchSetup) -> evaluation.Evaluator | None:
  """The evaluator of the held-out training images when the search evaluates itself."""
  if setup.config.eval.every_epochs <= 0:
    return None
  return evaluation.Evaluator(setup, evaluation.HOLDOUT)


def search_and_evaluate(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                        force: bool = False, stop_after: int | None = None) -> dict:
  """The `search` command: returns the report (also written to workdir/report.{json,md}).
  A decoder language model goes to `lm_search.search_language_model`.

  Args:
    stop_after: stop after this search step (tests use it to simulate a crash) and
      return {"stopped_at": step}; the same call resumes.
  """
  if lm_spec.is_language_model(config):
    return lm_search.search_language_model(config, workdir, force=force, stop_after=stop_after)
  spec = spec_lib.resolve(config)
  workdir = workdir_lib.prepare_workdir(spec.config, workdir, force=force)
  setup = setup_search(spec)
  workdir_lib.save_workdir_config(spec.config, workdir)
  evaluator, holdout = evaluation.Evaluator(setup), holdout_evaluator(setup)
  baseline = evaluation.baseline(setup, evaluator, workdir, holdout)
  tolerance = spec.config.eval.stop_within_dense
  goal = baseline["holdout"]["dense"] - tolerance if tolerance > 0 else None
  state, meta, selected = loop.run_stage(search_stage(setup, workdir, holdout, goal), spec,
                                         setup.mesh, workdir, stop_after=stop_after)
  if int(state.step) < setup.total_steps and meta.get("goal_reached_at") is None:
    return {"stopped_at": int(state.step)}
  state = with_selected_jackpot(setup, state, meta, selected)
  state = state.replace(batch_stats=evaluation.jackpot_batch_stats(setup, state))
  return _tune_and_report(setup, workdir, evaluator, state, meta, baseline)


def _restore(setup: SearchSetup, directory: Path, fresh: Any,
             keep: Any = None) -> tuple[Any, dict, Any] | None:
  shardings = setup.shardings(fresh)
  with checkpointing.SearchCheckpoints(directory, setup.config.checkpoint.keep) as ckpts:
    return ckpts.restore_latest(
        parallel.abstract_arrays(fresh, shardings),
        None if keep is None else parallel.abstract_arrays(keep(fresh), keep(shardings)))


def restore_search_state(setup: SearchSetup, workdir: Path) -> tuple[steps.SearchState, dict]:
  """The latest search checkpoint of a workdir carrying the selected jackpot
  (`with_selected_jackpot`), or a one-line error when the workdir has none."""
  restored = _restore(setup, workdir / SEARCH_CHECKPOINTS, initial_search_state(setup),
                      _jackpot_of)
  if restored is None:
    raise ValueError(f"{workdir} holds no search checkpoint; run `search` first")
  state, meta, selected = restored
  return with_selected_jackpot(setup, state, meta, selected), meta


def restore_tuned_state(setup: SearchSetup, workdir: Path,
                        batch_stats: Any) -> steps.TuneState | None:
  """The tuned weights and statistics if a "+T" stage ran in this workdir, else None."""
  directory = workdir / TUNE_CHECKPOINTS
  if not directory.exists():
    return None
  restored = _restore(setup, directory, initial_tune_state(setup, batch_stats))
  return None if restored is None else restored[0]


def load_workdir(workdir: str | os.PathLike,
                 overrides: dict | None = None) -> tuple[SearchSetup, steps.SearchState, dict]:
  """A finished (or stopped) run's set-up and latest search state carrying its selected
  jackpot (search.selected_on) with the BN statistics that jackpot is evaluated with
  (search.bn_statistics), for evaluate, export and the analysis scripts; `overrides` may
  change how it runs (see workdir.py)."""
  workdir = fileio.as_path(workdir, "--workdir")
  setup = setup_search(spec_lib.resolve(workdir_lib.load_workdir_config(workdir, overrides)))
  state, meta = restore_search_state(setup, workdir)
  state = state.replace(batch_stats=evaluation.jackpot_batch_stats(setup, state))
  return setup, state, meta


def evaluate_workdir(workdir: str | os.PathLike, overrides: dict | None = None) -> dict:
  """The `evaluate` command: re-evaluates the selected jackpot of the latest checkpoint and
  rewrites the reports."""
  workdir = fileio.as_path(workdir, "--workdir")
  config = workdir_lib.load_workdir_config(workdir, overrides)
  if lm_spec.is_language_model(config):
    return lm_search.search_language_model(config, workdir, force=True, evaluate_only=True)
  setup, state, meta = load_workdir(workdir, overrides)
  evaluator = evaluation.Evaluator(setup)
  baseline = evaluation.baseline(setup, evaluator, workdir, holdout_evaluator(setup))
  return _tune_and_report(setup, workdir, evaluator, state, meta, baseline)
