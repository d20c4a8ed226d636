"""Block-wise targets from the dense network: the per-block feature loss and the local stage."""

from __future__ import annotations

import functools
from pathlib import Path

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from jackpot_jax import models
from jackpot_jax.models.cifar_resnet import BasicBlock
from jackpot_jax.run import job
from jackpot_jax.search import block_targets, steps

from conftest import TinySearch, assert_refused_in_one_line, setup_of, tiny_config

BLOCKS = (BasicBlock,)


def _variables(search: TinySearch, masks=None) -> dict:
  variables = {"params": search.params, "batch_stats": search.batch_stats}
  if masks is not None:
    variables["masks"] = jax.tree.map(lambda m: m.astype(jnp.float32), masks)
  return variables


def _step(search: TinySearch, bn_mode: str = "recalibrate", **terms):
  return jax.jit(functools.partial(
      steps.distill_search_step, model=search.model, keep_counts=search.keep_counts,
      tx=search.tx, bn_mode=bn_mode, **{"distill_weight": 0.0, "distill_temperature": 4.0,
                                        "blocks": BLOCKS, **terms}))


def _teacher(search: TinySearch) -> steps.Teacher:
  return steps.Teacher(params=search.params, batch_stats=search.batch_stats)


def test_the_recorded_block_outputs_are_the_ones_flax_captures_in_call_order(tiny_search):
  search = tiny_search
  apply = functools.partial(search.model.apply, _variables(search, search.state.masks),
                            search.batch["image"], train=False)
  logits, calls = block_targets.apply_recording_blocks(apply, BLOCKS)
  np.testing.assert_array_equal(logits, apply())
  captured, state = search.model.apply(
      _variables(search, search.state.masks), search.batch["image"], train=False,
      capture_intermediates=lambda module, method: isinstance(module, BasicBlock),
      mutable=["intermediates"])
  np.testing.assert_array_equal(captured, logits)
  # ResNet-8: one BasicBlock a stage, named layer{stage}_0.
  flat = {k: v for k, v in jax.tree_util.tree_flatten_with_path(state["intermediates"])[0]}
  by_stage = [value for path, value in sorted(flat.items(), key=lambda kv: str(kv[0]))]
  assert len(calls.outputs) == len(calls.inputs) == 3 == len(by_stage)
  for recorded, expected in zip(calls.outputs, by_stage):
    np.testing.assert_array_equal(recorded, expected)
  # Each block reads what the one before it wrote.
  for before, after in zip(calls.outputs, calls.inputs[1:]):
    np.testing.assert_array_equal(before, after)


def test_relative_error_is_on_the_dense_features_scale():
  rng = np.random.default_rng(0)
  student, dense = rng.normal(size=(4, 6)), rng.normal(size=(4, 6))
  error = block_targets.relative_error(student, dense)
  np.testing.assert_allclose(error, np.sum((student - dense) ** 2) / np.sum(dense ** 2),
                             rtol=1e-6)
  np.testing.assert_allclose(block_targets.relative_error(1e3 * student, 1e3 * dense), error,
                             rtol=1e-5)
  loss = block_targets.feature_loss([student, dense], [dense, dense])
  np.testing.assert_allclose(loss, error / 2, rtol=1e-6)


def test_a_student_equal_to_the_dense_network_has_zero_feature_loss_and_gradient():
  """Every weight kept and BN in eval mode with the dense statistics: the student's blocks
  compute the dense ones bit for bit, so the feature term adds nothing."""
  search = TinySearch(bn_mode="frozen")
  state = search.state.replace(masks=jax.tree.map(jnp.ones_like, search.state.masks))
  targets, inputs, outputs = steps.dense_targets(_teacher(search), search.batch["image"],
                                                 model=search.model, blocks=BLOCKS)
  assert len(inputs) == len(outputs) == 3
  (loss, (_, _, features)), grads = steps._loss_and_grads(
      search.params, state, search.batch, model=search.model, bn_mode="frozen",
      label_smoothing=0.0, rank_by_magnitude=False, teacher_logits=None, distill_weight=0.0,
      distill_temperature=1.0, blocks=BLOCKS, dense_block_outputs=outputs, feature_weight=1.0)
  (plain, _), plain_grads = steps.score_loss_and_grads(
      search.params, state, search.batch, model=search.model, bn_mode="frozen")
  assert float(features) == 0.0
  np.testing.assert_allclose(loss, plain, rtol=1e-6)
  for with_features, without in zip(jax.tree.leaves(grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(with_features, without, rtol=1e-5, atol=1e-7)


def test_the_feature_term_adds_its_weight_times_the_feature_loss(tiny_search):
  search = tiny_search
  _, _, outputs = steps.dense_targets(_teacher(search), search.batch["image"],
                                      model=search.model, blocks=BLOCKS)
  common = dict(model=search.model, bn_mode="recalibrate", label_smoothing=0.0,
                rank_by_magnitude=False, teacher_logits=None, distill_weight=0.0,
                distill_temperature=1.0, blocks=BLOCKS, dense_block_outputs=outputs)
  (weighted, (_, _, features)), _ = steps._loss_and_grads(
      search.params, search.state, search.batch, feature_weight=2.0, **common)
  (plain, _), _ = steps.score_loss_and_grads(search.params, search.state, search.batch,
                                             model=search.model, bn_mode="recalibrate")
  assert float(features) > 0.0  # 90% of the weights pruned: the blocks move away
  np.testing.assert_allclose(weighted, plain + 2.0 * features, rtol=1e-5)


def test_the_local_stage_feeds_every_block_the_dense_input_and_trains_no_stem(tiny_search):
  """In the local stage a block's input is the dense block's, so no gradient reaches the
  layers before the first block (the stem conv) and the loss is the feature loss alone."""
  search = tiny_search
  _, inputs, outputs = steps.dense_targets(_teacher(search), search.batch["image"],
                                           model=search.model, blocks=BLOCKS)
  (loss, (_, _, features)), grads = steps._loss_and_grads(
      search.params, search.state, search.batch, model=search.model, bn_mode="recalibrate",
      label_smoothing=0.0, rank_by_magnitude=False, teacher_logits=None, distill_weight=0.0,
      distill_temperature=1.0, blocks=BLOCKS, dense_block_outputs=outputs,
      dense_block_inputs=inputs)
  assert float(loss) == float(features) > 0.0
  assert not np.any(np.asarray(grads["conv1"]["kernel"]))
  assert np.any(np.asarray(grads["layer1_0"]["conv1"]["kernel"]))
  # Each block's error depends on its own scores only: a block's loss does not change when
  # another block's mask does.
  recorded = []

  def run(masks):
    variables = {"params": search.params, "batch_stats": search.batch_stats,
                 "masks": jax.tree.map(lambda m: m.astype(jnp.float32), masks)}
    apply = functools.partial(search.model.apply, variables, search.batch["image"],
                              train=True, mutable=["batch_stats"])
    _, calls = block_targets.apply_recording_blocks(apply, BLOCKS, inputs)
    recorded.append(calls.inputs)
    return [block_targets.relative_error(s, d) for s, d in zip(calls.outputs, outputs)]

  before = run(search.state.masks)
  changed = dict(search.state.masks)
  changed["layer3_0"] = jax.tree.map(jnp.logical_not, changed["layer3_0"])
  after = run(changed)
  assert [float(x) for x in before[:2]] == [float(x) for x in after[:2]]
  assert float(before[2]) != float(after[2])
  for read, dense in zip(recorded[0], inputs):
    np.testing.assert_array_equal(read, dense)


def test_the_local_step_trains_on_the_feature_loss_alone_and_keeps_the_counts():
  search = TinySearch()
  local, end_to_end = _step(search, feature_weight=0.5, local=True), _step(search,
                                                                          feature_weight=0.5)
  state = search.state
  for step in (local, local, end_to_end, end_to_end):
    state, metrics = step(_teacher(search), state, search.batch)
    loss, features = float(metrics["loss"]), float(metrics["feature_loss"])
    if step is local:
      assert float(metrics["local_stage"]) == 1.0 and loss == features
    else:
      assert float(metrics["local_stage"]) == 0.0 and loss > 0.5 * features
    for mask, count in zip(jax.tree.leaves(state.masks), jax.tree.leaves(search.keep_counts)):
      assert int(mask.sum()) == count


def test_a_search_job_builds_the_block_targeted_step_from_the_config(tiny_job):
  config = tiny_config(tiny_job)
  config.search.feature_distill_weight, config.search.local_fraction = 0.5, 0.5
  setup = setup_of(config)
  stage = job.search_stage(setup, Path("unused"), None)
  assert stage.step.func is steps.distill_search_step
  assert stage.step.keywords["feature_weight"] == 0.5
  assert stage.step.keywords["blocks"] == (BasicBlock,)
  assert stage.step.keywords["distill_weight"] == 0.0
  assert "local" not in stage.step.keywords
  assert stage.first_steps == setup.local_steps == 3  # half of 6 steps
  assert stage.first_step.keywords["local"] is True


def test_block_targets_run_in_a_whole_search_and_log_the_feature_loss(tiny_job, tmp_path):
  config = tiny_config(tiny_job)  # 6 steps, each logged
  config.search.feature_distill_weight, config.search.local_fraction = 0.5, 0.5
  report = job.search_and_evaluate(config, tmp_path)
  assert report["search"]["steps"] == 6
  events = EventAccumulator(str(tmp_path / "tensorboard"))
  events.Reload()
  assert [e.value for e in events.Scalars("search/local_stage")] == [1, 1, 1, 0, 0, 0]
  features = [e.value for e in events.Scalars("search/feature_loss")]
  losses = [e.value for e in events.Scalars("search/loss")]
  assert len(features) == 6 and all(f > 0 for f in features)
  assert losses[:3] == pytest.approx(features[:3])


@pytest.mark.parametrize("field, value, message", [
    ("feature_distill_weight", -1.0, "search.feature_distill_weight must be >= 0"),
    ("local_fraction", 1.0, r"search.local_fraction must be in \[0, 1\)"),
])
def test_out_of_range_block_target_fields_are_one_line_errors(tiny_job, tmp_path, capsys,
                                                              field, value, message):
  config = tiny_config(tiny_job)
  config.search[field] = value
  assert_refused_in_one_line(lambda: job.search_and_evaluate(config, tmp_path), tmp_path,
                             capsys, message)


def test_a_model_that_names_no_blocks_refuses_block_targets_in_one_line(tiny_job, tmp_path,
                                                                        capsys):
  assert models.get_model_spec("vgg19").feature_blocks == ()
  config = tiny_config(tiny_job)
  config.model.name = "vgg19"
  config.search.feature_distill_weight = 1.0
  assert_refused_in_one_line(lambda: job.search_and_evaluate(config, tmp_path), tmp_path,
                             capsys, "model vgg19 names no feature blocks")


def test_every_residual_model_names_its_blocks():
  for name in ("resnet20", "resnet50", "vit_tiny_p4", "mobilenet_v2", "gpt2"):
    blocks = models.get_model_spec(name).feature_blocks
    assert blocks and all(issubclass(b, nn.Module) for b in blocks), name
