"""Search-recipe levers: distillation from the dense network, BN momentum, and
why the magnitude init's scale and gap need no field of their own."""

from __future__ import annotations

import dataclasses
import functools
import os
import subprocess
import sys
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from jackpot_jax.run import evaluation, setup as setup_lib, spec as spec_lib, job
from jackpot_jax.search import masking, schedules, scores as scores_lib, steps

from conftest import (CHILD_XLA_FLAGS, TinySearch, assert_refused_in_one_line, final_search_state, setup_of,
                      sgd_config, tiny_config, tiny_overrides)

REPO = Path(__file__).resolve().parents[2]


def _equal_bitwise(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _statics(search: TinySearch, bn_mode: str = "recalibrate", **extra) -> dict:
  return dict(model=search.model, keep_counts=search.keep_counts, tx=search.tx,
              bn_mode=bn_mode, **extra)


def _teacher(search: TinySearch) -> steps.Teacher:
  return steps.Teacher(params=search.params, batch_stats=search.batch_stats)


def _distill_step(search: TinySearch, weight: float, temperature: float = 4.0,
                  bn_mode: str = "recalibrate"):
  return jax.jit(functools.partial(steps.distill_search_step, distill_weight=weight,
                                   distill_temperature=temperature,
                                   **_statics(search, bn_mode)))


def test_search_without_distillation_runs_the_plain_step_on_the_plain_weights(tiny_job):
  """distill_weight=0 (the default) builds the same step as before distillation existed:
  no teacher, no extra forward pass; > 0 builds the distilling step with the pre-trained
  BN statistics beside the weights."""
  config = tiny_config(tiny_job)
  setup = setup_of(config)
  plain = job.search_stage(setup, Path("unused"), None)
  assert plain.step.func is steps.search_step and plain.frozen is setup.params
  assert plain.step.keywords["bn_momentum"] == steps.TORCH_BN_MOMENTUM
  config.search.distill_weight, config.search.distill_temperature = 0.5, 2.0
  setup = setup_of(config)
  distilling = job.search_stage(setup, Path("unused"), None)
  assert distilling.step.func is steps.distill_search_step
  assert distilling.step.keywords["distill_weight"] == 0.5
  assert distilling.step.keywords["distill_temperature"] == 2.0
  assert isinstance(distilling.frozen, steps.Teacher)
  assert distilling.frozen.params is setup.params
  assert _equal_bitwise(distilling.frozen.batch_stats, setup.batch_stats)


def test_distilling_step_with_weight_zero_is_bitwise_the_plain_step(tiny_search):
  search = tiny_search
  plain, distilling = search.state, search.state
  distill_step = _distill_step(search, 0.0)
  for _ in range(3):
    plain, plain_metrics = search.step(search.params, plain, search.batch)
    distilling, metrics = distill_step(_teacher(search), distilling, search.batch)
    assert _equal_bitwise(plain, distilling)
    assert float(metrics["loss"]) == float(plain_metrics["loss"])


def test_student_equal_to_teacher_has_zero_distillation_loss_and_gradient():
  """All masks ones and BN in eval mode with the pre-trained statistics: the student is the
  teacher, so the pure distillation loss (w=1) and its gradient vanish."""
  search = TinySearch(bn_mode="frozen")
  state = search.state.replace(masks=jax.tree.map(jnp.ones_like, search.state.masks))

  @jax.jit
  def losses(state, batch):
    targets = steps.teacher_forward(_teacher(search), batch["image"], model=search.model)
    distilled = steps.score_loss_and_grads(
        search.params, state, batch, model=search.model, bn_mode="frozen",
        teacher_logits=targets, distill_weight=1.0, distill_temperature=4.0)
    # The same student with the cross-entropy alone.
    plain = steps.score_loss_and_grads(search.params, state, batch, model=search.model,
                                       bn_mode="frozen")
    return targets, distilled, plain

  targets, ((loss, (logits, _)), grads), (_, ce_grads) = losses(state, search.batch)
  # W * 1 and W compile to different graphs, so they agree to float32 rounding, not bitwise
  # (how far depends on the CPU's vector width); the gradient is then rounding noise, a
  # millionth of the cross-entropy's on this network.
  np.testing.assert_allclose(np.asarray(logits), np.asarray(targets), rtol=1e-5, atol=1e-5)
  assert abs(float(loss)) < 1e-6
  ce_norm = float(optax.tree.norm(ce_grads))
  assert ce_norm > 1e-3  # the cross-entropy does move the scores
  assert float(optax.tree.norm(grads)) < 1e-5 * ce_norm


def _kl_reference(student: np.ndarray, teacher: np.ndarray, temperature: float) -> float:
  """T^2 * mean over the batch of KL(softmax(teacher/T) || softmax(student/T)), in float64."""

  def log_softmax(x):
    x = x / temperature
    x = x - x.max(-1, keepdims=True)
    return x - np.log(np.exp(x).sum(-1, keepdims=True))

  log_p, log_q = log_softmax(teacher), log_softmax(student)
  return temperature ** 2 * float(np.mean(np.sum(np.exp(log_p) * (log_p - log_q), -1)))


@pytest.mark.parametrize("temperature", [1.0, 4.0, 20.0])
def test_distillation_loss_is_t_squared_times_the_softened_kl(temperature):
  rng = np.random.default_rng(0)
  student, teacher = rng.normal(0, 3, (2, 6, 10)).astype(np.float32)
  expected = _kl_reference(student.astype(np.float64), teacher.astype(np.float64), temperature)
  loss = steps.distillation_loss(jnp.asarray(student), jnp.asarray(teacher), temperature)
  assert float(loss) == pytest.approx(expected, rel=1e-4)


def test_t_squared_keeps_the_distillation_gradient_on_one_scale_at_high_temperature():
  """Hinton et al.'s reason for T^2: the soft targets' gradient shrinks as 1/T^2, so with the
  factor it tends to (student - teacher) / classes (zero-mean logits) whatever T is."""
  rng = np.random.default_rng(1)
  student, teacher = rng.normal(0, 1, (2, 4, 10)).astype(np.float32)
  student -= student.mean(-1, keepdims=True)
  teacher -= teacher.mean(-1, keepdims=True)
  grad = jax.grad(steps.distillation_loss)
  limit = (student - teacher) / (student.shape[-1] * student.shape[0])
  for temperature in (100.0, 1000.0):  # without T^2 these would differ a hundredfold
    np.testing.assert_allclose(grad(jnp.asarray(student), jnp.asarray(teacher), temperature),
                               limit, atol=0.03 * np.abs(limit).max())


def test_distilling_step_loss_is_the_weighted_sum_with_the_dense_teacher(tiny_search):
  search = tiny_search
  weight, temperature = 0.25, 4.0
  _, metrics = _distill_step(search, weight, temperature)(_teacher(search), search.state,
                                                          search.batch)

  @jax.jit
  def independently(state, batch):
    # The teacher: the dense network (no masks) with its pre-trained statistics, eval mode.
    dense = search.model.apply({"params": search.params, "batch_stats": search.batch_stats},
                               batch["image"], train=False)
    (_, (logits, _)), _ = steps.score_loss_and_grads(search.params, state, batch,
                                                     model=search.model, bn_mode="recalibrate")
    return dense, logits

  dense, logits = independently(search.state, search.batch)
  cross_entropy = steps.cross_entropy(logits, search.batch["label"])
  distill = _kl_reference(np.asarray(logits, np.float64), np.asarray(dense, np.float64),
                          temperature)
  assert float(metrics["distill_loss"]) == pytest.approx(distill, rel=1e-4)
  assert float(metrics["loss"]) == pytest.approx(
      (1 - weight) * float(cross_entropy) + weight * distill, rel=1e-5)


@pytest.mark.default_codegen
def test_bn_momentum_weighs_each_batch_statistics_as_pytorch_does(tiny_search):
  """Running statistics = (1 - m) * old + m * the batch's; the scores do not change."""
  search, momentum = tiny_search, 0.3
  step = jax.jit(functools.partial(steps.search_step,
                                   **_statics(search, bn_momentum=momentum)))
  state, _ = step(search.params, search.state, search.batch)
  reference, _ = search.step(search.params, search.state, search.batch)
  batch_only = jax.jit(functools.partial(steps.batch_statistics, model=search.model))(
      search.params, {"batch_stats": search.batch_stats, "masks": search.state.masks},
      search.batch)
  for got, old, new in zip(*(jax.tree.leaves(s) for s in (state.batch_stats,
                                                          search.batch_stats, batch_only))):
    np.testing.assert_allclose(got, (1 - momentum) * old + momentum * new, rtol=1e-5,
                               atol=1e-6)
  assert _equal_bitwise(state.scores, reference.scores)


def test_magnitude_init_gap_is_the_learning_rate_and_weight_decay_in_disguise():
  """The reference scores 1 / 0.99 mapped to a / a - c * 0.01 (any scale a, gap c times the
  reference's) and searched with lr * c and weight decay / c give the reference masks at
  every step: the straight-through gradient does not depend on the scores' values, a
  positive affine map keeps each layer's top-k, and the decay's pull on the offset is the
  same for every score. So search.learning_rate and search.weight_decay already reach
  every (scale, gap) of the SGD search; the magnitude init needs no field of its own."""
  c, offset = 4.0, 3.0
  reference = TinySearch(optimizer_config=sgd_config(learning_rate=0.1, weight_decay=5e-4))
  scaled = TinySearch(optimizer_config=sgd_config(learning_rate=0.1 * c, weight_decay=5e-4 / c))
  scores = jax.tree.map(lambda s: offset + c * (s - 1.0), reference.scores)
  state = steps.init_search_state(scores, scaled.keep_counts, scaled.batch_stats, scaled.tx)
  assert _equal_bitwise(state.masks, reference.state.masks)
  ref_state, flips = reference.state, 0
  for _ in range(6):
    ref_state, metrics = reference.step(reference.params, ref_state, reference.batch)
    state, _ = scaled.step(scaled.params, state, scaled.batch)
    assert _equal_bitwise(state.masks, ref_state.masks)
    flips += int(metrics["mask_flips"])
  assert flips > 0  # the masks did move


@pytest.mark.parametrize("field, value, message", [
    ("distill_weight", -0.1, "search.distill_weight must be in [0, 1] (0: no distillation), "
     "got -0.1"),
    ("distill_weight", 1.5, "search.distill_weight must be in [0, 1]"),
    ("distill_temperature", 0.0, "search.distill_temperature must be positive, got 0.0"),
    ("bn_momentum", 0.0, "search.bn_momentum must be in (0, 1]"),
    ("bn_momentum", 1.5, "search.bn_momentum must be in (0, 1]"),
    ("bn_statistics", "final", "unknown search.bn_statistics 'final'; choose one of running, "
     "reestimated"),
])
def test_recipe_fields_out_of_range_are_one_line_errors(tiny_job, field, value, message):
  config = tiny_config(tiny_job)
  config.search[field] = value
  with pytest.raises(ValueError) as error:
    spec_lib.resolve(config)
  assert message in str(error.value) and "\n" not in str(error.value)


@pytest.mark.parametrize("fields, message", [
    ({"sparsity_ramp": 1.5}, "search.sparsity_ramp must be a fraction of the search in "
     "[0, 1] (0: off), got 1.5"),
    ({"sparsity_ramp": -0.1}, "search.sparsity_ramp must be a fraction"),
    ({"start_sparsity": 0.5}, "search.start_sparsity=0.5 is the start of a sparsity ramp; "
     "set search.sparsity_ramp > 0"),
    ({"sparsity_ramp": 0.5, "start_sparsity": 0.9}, "search.start_sparsity must be in "
     "[0, search.sparsity=0.9) for the ramp to prune towards it, got 0.9"),
    ({"sparsity_ramp": 0.5, "start_sparsity": -0.2}, "search.start_sparsity must be in [0, "),
    ({"sparsity_ramp": 0.5, "pattern": "2:4", "sparsity_plan": "l1"},
     "search.sparsity_ramp anneals top-k keep counts; search.pattern=2:4 has none"),
    ({"max_flips_per_step": -1}, "search.max_flips_per_step must be a whole number >= 0 "
     "(0: off), got -1"),
    ({"max_flips_per_step": 5, "pattern": "2:4", "sparsity_plan": "l1"},
     "search.max_flips_per_step caps top-k swaps; search.pattern=2:4 selects within groups"),
])
def test_bad_ramp_and_flip_cap_values_are_one_line_errors(tiny_job, fields, message):
  config = tiny_config(tiny_job)
  for field, value in fields.items():
    config.search[field] = value
  with pytest.raises(ValueError) as error:
    spec_lib.resolve(config)
  assert message in str(error.value) and "\n" not in str(error.value)


def test_a_bad_flip_cap_ends_the_search_command_in_one_line_with_status_2(tiny_job, tmp_path,
                                                                          capsys):
  config = tiny_config(tiny_job)
  config.search.max_flips_per_step = -3
  assert_refused_in_one_line(lambda: job.search_and_evaluate(config, tmp_path), tmp_path,
                             capsys, r"search.max_flips_per_step must be a whole number >= 0")


def test_a_ramped_search_starts_from_the_magnitude_mask_at_the_ramps_start_counts(tiny_job):
  """Each layer prunes start_sparsity / sparsity of its planned count at step 0, and the
  magnitude scores put the plan's magnitude mask first within that start mask."""
  config = tiny_config(tiny_job)
  config.search.sparsity_ramp, config.search.start_sparsity = 0.5, 0.45
  setup = setup_of(config)
  ramp = setup.keep_ramp
  assert ramp.steps == round(0.5 * setup.total_steps)
  plan = setup.plan
  start_plan = dataclasses.replace(plan, prune_counts={
      name: schedules.ramp_start_prune_count(count, 0.45, 0.9)
      for name, count in plan.prune_counts.items()})
  expected = masking.compiled_masks(
      scores_lib.init_scores(setup.params, start_plan, "magnitude", jax.random.PRNGKey(0)),
      start_plan.keep_counts())
  state = setup_lib.initial_search_state(setup)
  assert _equal_bitwise(state.masks, expected)
  assert [int(np.sum(m)) for m in jax.tree.leaves(state.masks)] == ramp.counts_at(0).tolist()
  assert list(ramp.end) == jax.tree.leaves(setup.keep_counts)
  # Before any step, the plan's top-k of the start scores is the plan's magnitude mask.
  assert _equal_bitwise(masking.compiled_masks(state.scores, setup.keep_counts),
                        setup_lib.magnitude_masks(setup))
  holdout = evaluation.Evaluator(setup, evaluation.HOLDOUT)
  stage = job.search_stage(setup, Path("unused"), holdout)
  assert stage.step.keywords["keep_ramp"] == ramp and stage.step.keywords["flip_cap"] is None
  assert stage.evaluation.first_selectable == ramp.steps  # no denser mask is the jackpot


def test_bn_momentum_with_frozen_statistics_is_an_error(tiny_job):
  config = tiny_config(tiny_job)
  config.search.bn_mode, config.search.bn_momentum = "frozen", 0.5
  with pytest.raises(ValueError, match="needs search.bn_mode=recalibrate"):
    spec_lib.resolve(config)
  config.search.bn_momentum = steps.TORCH_BN_MOMENTUM
  spec_lib.resolve(config)


def test_reestimated_bn_statistics_need_recalibration_images(tiny_job):
  config = tiny_config(tiny_job)
  config.search.bn_statistics, config.eval.recalibration_images = "reestimated", 0
  with pytest.raises(ValueError, match="set it > 0"):
    spec_lib.resolve(config)


def test_running_bn_statistics_are_the_searchs_own_by_default(tiny_job):
  setup = setup_of(tiny_config(tiny_job))
  state = setup_lib.initial_search_state(setup)
  assert evaluation.jackpot_batch_stats(setup, state) is state.batch_stats


def test_reestimated_bn_statistics_are_what_the_jackpot_is_selected_reported_and_exported_with(
    tiny_job, tmp_path):
  """search.bn_statistics=reestimated: the held-out evaluations, report.json's jackpot
  accuracy and the state `evaluate`/`export` load all use the statistics re-estimated for
  the final masks, not the running ones the search checkpointed."""
  config = tiny_config(tiny_job)
  config.search.bn_statistics, config.eval.recalibration_images = "reestimated", 32
  report = job.search_and_evaluate(config, tmp_path / "run")
  setup = setup_of(config)
  saved = final_search_state(config, tmp_path / "run")
  reestimated = evaluation.recalibrated_batch_stats(setup, saved.masks)
  assert not _equal_bitwise(reestimated, saved.batch_stats)
  assert report["search"]["bn_statistics"] == "reestimated"
  assert report["accuracy"]["jackpot"] == evaluation.Evaluator(setup).accuracy(
      setup.params, reestimated, saved.masks)
  assert report["holdout"]["jackpot"] == evaluation.Evaluator(setup, evaluation.HOLDOUT).accuracy(
      setup.params, reestimated, saved.masks)
  _, loaded, _ = job.load_workdir(tmp_path / "run")
  assert _equal_bitwise(jax.device_get(loaded.batch_stats), jax.device_get(reestimated))


def test_bad_distill_weight_exits_2_in_one_line_through_the_command(tiny_job, tmp_path):
  env = dict(os.environ, XLA_FLAGS=CHILD_XLA_FLAGS, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run(
      [sys.executable, "-m", "jackpot_jax", "search", f"--config={REPO / 'configs' / 'default.py'}",
       f"--workdir={tmp_path / 'run'}", *tiny_overrides(tiny_job),
       "--config.search.distill_weight=1.5"],
      cwd=REPO, env=env, capture_output=True, text=True, timeout=240)
  assert result.returncode == 2, result.stderr[-2000:]
  assert result.stderr.strip() == ("jackpot: error: search.distill_weight must be in [0, 1] "
                                   "(0: no distillation), got 1.5")
  assert not (tmp_path / "run").exists()
