"""`jackpot search` on a decoder language model: the jackpot's masks over the frozen
decoder, searched from a one-shot baseline's mask and reported beside every baseline.

  report = search_language_model(config_files.load_config("llm_tiny"), "workdirs/llm_24")

The path: the config checked (`lm_spec.resolve_search`), the decoder imported and placed
on the mesh (FSDP-sharded with mesh.fsdp), dense perplexity and every one-shot baseline
measured once per workdir (`baselines.json`, each method's masks in `masks/`), the scores
started from search.score_init's mask (kept 1.0, pruned 0.99: the first top-k is that
mask exactly), then the one training loop (`loop.run_stage`, Orbax resume, held-out
selection on the held-out training sequences' perplexity), and the selected jackpot
measured on the evaluation split. Its masks land in `masks/jackpot.npz` for
`jackpot export --format=hf`; report.json and report.md come last.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import os
import time
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax

from jackpot_jax import fileio, models
from jackpot_jax.data import text
from jackpot_jax.data.text import TextInfo
from jackpot_jax.pytorch.hf_decoders import decoder_spec, import_hf_decoder
from jackpot_jax.run import (checkpointing, compilation_cache, lm_baselines, lm_masks,
                             lm_report, lm_spec, loop, parallel,
                             perplexity as perplexity_lib, workdir as workdir_lib)
from jackpot_jax.baselines.layer_masks import Sparsity
from jackpot_jax.run.lm_spec import BaselinesSpec
from jackpot_jax.run.perplexity import Perplexity
from jackpot_jax.search import block_targets, lm_steps, optim, schedules, steps
from jackpot_jax.search.masking import NMPattern
from jackpot_jax.search.scores import MAGNITUDE_KEPT, MAGNITUDE_PRUNED

PyTree = Any
SEARCH_CHECKPOINTS = "checkpoints"
BASELINES_FILE = "baselines.json"
JACKPOT = "jackpot"
HOLDOUT = "holdout"


@dataclasses.dataclass(frozen=True)
class LMSetup:
  """A language-model search's fixed inputs: the decoder on its devices and the text."""

  spec: BaselinesSpec
  model: Any
  params: PyTree
  hf_config: dict
  mesh: Any
  info: TextInfo

  @property
  def config(self) -> ml_collections.FrozenConfigDict:
    return self.spec.config

  @property
  def steps_per_epoch(self) -> int:
    return max(self.info.num_train // self.config.search.batch_size, 1)

  @property
  def total_steps(self) -> int:
    return max(int(round(self.config.search.num_epochs * self.steps_per_epoch)), 1)

  def optimizer(self) -> optax.GradientTransformation:
    return optim.make_optimizer(self.config.search, self.total_steps)

  def shardings(self, tree: PyTree) -> PyTree:
    return parallel.config_shardings(tree, self.mesh, self.config.mesh)

  def measure(self, masks: PyTree | None, split: str | None = None) -> Perplexity:
    """Perplexity of W * masks (dense with None) on `split` (None: data.eval_split)."""
    return perplexity_lib.perplexity(
        self.model, self.params, self.spec.data, masks=masks, split=split,
        batch_size=self.config.eval.perplexity_batch_size, mesh=self.mesh)


def setup_language_model(spec: BaselinesSpec) -> LMSetup:
  """The mesh, the text (checked), the decoder imported and checked against the text, its
  params placed as mesh.fsdp asks. Batch sizes are checked against the mesh first."""
  config = spec.config
  compilation_cache.enable(config.compilation_cache_dir)
  mesh = parallel.make_mesh(config.mesh.model, config.mesh.num_devices)
  parallel.check_batch_size(config.search.batch_size, mesh)
  lm_baselines.calibration_batch_size(config.baselines.batch_size, mesh.devices.size)
  info = text.text_info(spec.data)
  if info.num_train < config.search.batch_size:
    raise ValueError(f"search.batch_size={config.search.batch_size} is more than the "
                     f"{info.num_train} searched training sequences of {spec.data.name}; "
                     "lower it")
  model, params, hf_config = import_hf_decoder(spec.folder)
  text.check_model_fit(spec.data, model.vocab_size, getattr(model, "n_positions", None))
  params = jax.device_put(params, parallel.config_shardings(params, mesh, config.mesh))
  return LMSetup(spec=spec, model=model, params=params, hf_config=hf_config, mesh=mesh,
                 info=info)


def _baseline_inputs(setup: LMSetup) -> dict:
  """What the baselines depend on: a saved measurement of other inputs is measured again."""
  config = setup.config
  return {"checkpoint": str(setup.spec.folder), "data": setup.spec.data.name,
          "seq_len": setup.spec.data.seq_len, "eval_split": setup.spec.data.eval_split,
          "holdout_sequences": setup.info.num_holdout,
          "target": lm_report.target_description(setup.spec.target),
          "methods": list(_measured_methods(setup.spec)),
          "calibration_sequences": config.baselines.calibration_sequences,
          "seed": config.baselines.seed}


def _measured_methods(spec: BaselinesSpec) -> tuple[str, ...]:
  """baselines.methods, and the search's start (search.score_init) if it is not one."""
  start = spec.config.search.score_init
  return spec.methods + (() if start in spec.methods else (start,))


def config_start(setup: LMSetup) -> str:
  """The one-shot method the scores start from (search.score_init)."""
  return setup.config.search.score_init


def _perplexity_of(saved: dict | None) -> Perplexity | None:
  return None if saved is None else Perplexity(**saved)


def _outcome_of(saved: dict) -> lm_report.MethodOutcome:
  return lm_report.MethodOutcome(perplexity=Perplexity(**saved["perplexity"]),
                                 updated=_perplexity_of(saved["updated"]),
                                 counted=saved["counted"], seconds=saved["seconds"])


def _outcome_json(outcome: lm_report.MethodOutcome) -> dict:
  return {"perplexity": dataclasses.asdict(outcome.perplexity),
          "updated": None if outcome.updated is None else dataclasses.asdict(outcome.updated),
          "counted": outcome.counted, "seconds": outcome.seconds}


def measure_baselines(setup: LMSetup, workdir: Path) -> dict:
  """Dense perplexity and every one-shot baseline (the start's included), once per workdir
  and inputs: {"dense", "outcomes", "calibration", "seconds"} (see lm_report.build_report)
  and "start", the masks of search.score_init's method.

  Each method's masks are written to masks/<method>.npz before baselines.json, so a saved
  measurement always has its masks; a fresh one hands the start's over in memory (every
  process has them, whichever process writes)."""
  path = workdir / BASELINES_FILE
  inputs = _baseline_inputs(setup)
  if path.exists():
    saved = json.loads(path.read_text())
    if saved.get("inputs") == inputs and all(
        m in lm_masks.saved_methods(workdir) for m in inputs["methods"]):
      return {"dense": Perplexity(**saved["dense"]),
              "outcomes": {m: _outcome_of(o) for m, o in saved["outcomes"].items()},
              "calibration": saved["calibration"], "seconds": saved["seconds"],
              "start": lm_masks.load_masks(workdir, config_start(setup))}
  start = {}

  def each_masks(name: str, masks: PyTree) -> None:
    if jax.process_index() == 0:
      lm_masks.save_masks(workdir, name, masks)
    if name == config_start(setup):
      start["masks"] = masks

  measured = lm_baselines.measure_all(setup.spec, tuple(inputs["methods"]), setup.model,
                                      setup.params, setup.mesh, each_masks)
  seconds = {"dense": measured.dense_seconds}
  if jax.process_index() == 0:
    fileio.write_json(path, {"inputs": inputs, "dense": dataclasses.asdict(measured.dense),
                             "outcomes": {m: _outcome_json(o)
                                          for m, o in measured.outcomes.items()},
                             "calibration": measured.calibration, "seconds": seconds})
  return {"dense": measured.dense, "outcomes": measured.outcomes,
          "calibration": measured.calibration, "seconds": seconds, "start": start["masks"]}


def keep_counts(target: Sparsity, start: PyTree) -> PyTree:
  """Each masked kernel's rule: the N:M pattern, or (unstructured) the number of weights
  the start mask keeps in it, so that the first top-k is the start mask exactly."""
  if isinstance(target, NMPattern):
    return jax.tree.map(lambda _: target, start)
  return jax.tree.map(lambda mask: int(np.count_nonzero(mask)), start)


def start_scores(start: PyTree) -> PyTree:
  """Scores kept 1.0 / pruned 0.99 from the start mask (the reference's magnitude values):
  their top-k is the start mask, and every score starts almost equal."""
  return jax.tree.map(
      lambda mask: jnp.where(jnp.asarray(mask, bool), MAGNITUDE_KEPT, MAGNITUDE_PRUNED
                             ).astype(jnp.float32), start)


def initial_state(setup: LMSetup, start: PyTree, rules: PyTree) -> steps.SearchState:
  """`start_scores`, their masks, a fresh optimizer state, placed as mesh.fsdp asks."""
  state = steps.init_search_state(start_scores(start), rules, {}, setup.optimizer())
  return jax.device_put(state, setup.shardings(state), may_alias=False)


def search_stage(setup: LMSetup, workdir: Path, start: PyTree) -> loop.Stage:
  """The mask search over the frozen decoder, evaluated on the held-out training
  sequences' perplexity (the lower the better) when eval.every_epochs > 0."""
  config = setup.config
  search = config.search
  rules = keep_counts(setup.spec.target, start)
  local_steps = block_targets.local_steps(search, setup.total_steps)
  step = functools.partial(lm_steps.lm_search_step, model=setup.model, keep_counts=rules,
                           tx=setup.optimizer(), distill_weight=search.distill_weight,
                           distill_temperature=search.distill_temperature,
                           feature_weight=search.feature_distill_weight,
                           blocks=block_targets.targeted_blocks(
                               search, models.get_model_spec(config.model.name).feature_blocks),
                           flip_cap=schedules.flip_cap(search.max_flips_per_step,
                                                       setup.total_steps),
                           flips_per_layer=search.flips_per_layer)

  def measure(state) -> tuple[float, dict]:
    held_out = setup.measure(state.masks, split=HOLDOUT)
    return held_out.perplexity, {"holdout/jackpot_perplexity": held_out.perplexity,
                                 "holdout/jackpot_nll": held_out.nll}

  evaluation = None
  if config.eval.every_epochs > 0 and setup.info.num_holdout:
    evaluation = loop.Evaluation(
        every_steps=max(int(round(config.eval.every_epochs * setup.steps_per_epoch)), 1),
        measure=measure, metric="holdout_perplexity", lower_is_better=True,
        selected_key="perplexity",
        keep=(lambda state: {"masks": state.masks}) if lm_spec.selects_on_holdout(config)
        else None)
  return loop.Stage(
      name="search", step=step, frozen=setup.params,
      fresh_state=initial_state(setup, start, rules), checked="scores",
      checked_values=steps.scores_of, checkpoint_dir=workdir / SEARCH_CHECKPOINTS,
      total_steps=setup.total_steps, steps_per_epoch=setup.steps_per_epoch, seed=search.seed,
      learning_rate=optim.learning_rate_of(search, setup.total_steps),
      evaluation=evaluation, profile_steps=lm_spec.profile_steps(config),
      first_step=functools.partial(step, local=True) if local_steps else None,
      first_steps=local_steps)


def _search_description(setup: LMSetup, meta: dict) -> dict:
  search = setup.config.search
  return {"score_init": search.score_init, "distill_weight": search.distill_weight,
          "distill_temperature": search.distill_temperature,
          "feature_distill_weight": search.feature_distill_weight,
          "local_fraction": search.local_fraction, "optimizer": search.optimizer,
          "learning_rate": search.learning_rate, "batch_size": search.batch_size,
          "epochs": search.num_epochs, "steps": setup.total_steps,
          "steps_per_epoch": setup.steps_per_epoch,
          "tokens_per_step": search.batch_size * setup.spec.data.seq_len,
          "selected_on": lm_spec.selected_on(setup.config),
          "selected": meta.get("selected"), "history": meta.get("history", []),
          "wall_seconds": meta.get("wall_seconds")}


def search_language_model(config: ml_collections.ConfigDict, workdir: str | os.PathLike, *,
                          force: bool = False, stop_after: int | None = None,
                          evaluate_only: bool = False) -> dict:
  """`jackpot search` for a decoder: returns the report (also workdir/report.{json,md}).

  Args:
    force: reuse a workdir whose saved config differs.
    stop_after: stop after this search step and return {"stopped_at": step}; the same
      call resumes from the checkpoint written there.
    evaluate_only: `jackpot evaluate`: no step is run; the latest checkpoint's selected
      jackpot is measured and the reports rewritten.
  """
  load_at_start, started = os.getloadavg()[0], time.perf_counter()
  spec = lm_spec.resolve_search(config)
  workdir = workdir_lib.prepare_workdir(spec.config, workdir, force=force)
  if evaluate_only:  # before anything loads: a workdir without a checkpoint has no jackpot
    with checkpointing.SearchCheckpoints(workdir / SEARCH_CHECKPOINTS,
                                         spec.config.checkpoint.keep) as ckpts:
      stop_after = ckpts.latest_step()
    if stop_after is None:
      raise ValueError(f"{workdir} holds no search checkpoint; run `search` first")
  setup, import_seconds = lm_baselines.timed(lambda: setup_language_model(spec))
  if not evaluate_only:  # evaluate changes how it runs, not the searched config
    workdir_lib.save_workdir_config(spec.config, workdir)
  measured = measure_baselines(setup, workdir)
  start = measured["start"]
  state, meta, selected = loop.run_stage(search_stage(setup, workdir, start), spec, setup.mesh,
                                         workdir, stop_after=stop_after)
  if int(state.step) < setup.total_steps and not evaluate_only:
    return {"stopped_at": int(state.step)}
  masks = state.masks if selected is None else selected["masks"]
  jackpot, jackpot_seconds = lm_baselines.timed(lambda: setup.measure(masks))
  masks = jax.device_get(masks)
  counted = lm_report.count_masks(setup.params, masks, decoder_spec(setup.hf_config).maskable,
                                  spec.target)
  report = lm_report.build_report(
      model=lm_report.describe_model(spec.config.model.name, setup.hf_config, setup.params,
                                     decoder_spec(setup.hf_config).maskable),
      checkpoint=str(spec.folder), dataset=spec.data.name, target=spec.target,
      dense=measured["dense"], outcomes=measured["outcomes"],
      protocol=perplexity_lib.describe(spec.data), calibration=measured["calibration"],
      seconds={"import": import_seconds, **measured["seconds"],
               "total": time.perf_counter() - started},
      environment=lm_baselines.environment(load_at_start),
      jackpot=lm_report.JackpotOutcome(
          perplexity=jackpot, counted=counted,
          seconds={"search": meta.get("wall_seconds", 0.0), "perplexity": jackpot_seconds},
          search=_search_description(setup, meta)))
  if jax.process_index() == 0:
    lm_masks.save_masks(workdir, JACKPOT, masks)
    lm_report.write_reports(workdir, report)
  return report
