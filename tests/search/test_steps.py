import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jackpot_jax.search import masking, schedules, steps
from jackpot_jax.models.wrapper import MASKS

from conftest import TinySearch, sgd_config


def _equal_bitwise(a, b) -> bool:
  return all(np.array_equal(np.asarray(x), np.asarray(y))
             for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True))


def _run(search: TinySearch, num_steps: int):
  state, history = search.state, []
  for _ in range(num_steps):
    state, metrics = search.step(search.params, state, search.batch)
    history.append((state, metrics))
  return history


def test_search_changes_only_scores_and_running_stats(tiny_search):
  params_before = jax.tree.map(np.array, tiny_search.params)
  state = _run(tiny_search, 4)[-1][0]
  assert _equal_bitwise(tiny_search.params, params_before)  # weights, biases, BN affine
  assert not _equal_bitwise(state.scores, tiny_search.state.scores)
  assert not _equal_bitwise(state.batch_stats, tiny_search.batch_stats)
  assert int(state.step) == 4


def test_frozen_bn_mode_keeps_running_stats():
  search = TinySearch(bn_mode="frozen")
  state = _run(search, 2)[-1][0]
  assert _equal_bitwise(state.batch_stats, search.batch_stats)
  assert not _equal_bitwise(state.scores, search.state.scores)


def test_every_mask_keeps_exactly_k_at_every_step(tiny_search):
  expected = traverse_util.flatten_dict(tiny_search.keep_counts)
  flips = 0
  for state, metrics in _run(tiny_search, 5):
    for key, mask in traverse_util.flatten_dict(state.masks).items():
      assert int(np.sum(mask)) == expected[key], key
    recomputed = masking.compute_masks(state.scores, tiny_search.keep_counts)
    assert _equal_bitwise(recomputed, state.masks)
    flips += int(metrics["mask_flips"])
  assert flips > 0


def test_masks_keep_exactly_k_when_all_scores_tie():
  search = TinySearch()
  tied = jax.tree.map(jnp.ones_like, search.scores)
  state = steps.init_search_state(tied, search.keep_counts, search.batch_stats, search.tx)
  expected = traverse_util.flatten_dict(search.keep_counts)
  for key, mask in traverse_util.flatten_dict(state.masks).items():
    assert int(np.sum(mask)) == expected[key]


def test_score_gradient_equals_effective_weight_gradient_times_weight(tiny_search):
  search = tiny_search
  (_, _), grads = steps.score_loss_and_grads(search.params, search.state, search.batch,
                                             model=search.model, bn_mode="recalibrate")
  # Independent computation: differentiate the loss of a dense model whose kernels are
  # W * M with respect to those effective kernels, then multiply by W.
  flat_params = traverse_util.flatten_dict(search.params)
  flat_masks = traverse_util.flatten_dict(search.state.masks)
  effective = dict(flat_params)
  for key, mask in flat_masks.items():
    effective[key] = flat_params[key] * mask

  def dense_loss(flat_effective):
    logits, _ = search.model.apply(
        {"params": traverse_util.unflatten_dict(flat_effective),
         "batch_stats": search.batch_stats},
        search.batch["image"], train=True, mutable=["batch_stats"])
    return steps.cross_entropy(logits, search.batch["label"])

  effective_grads = jax.grad(dense_loss)(effective)
  flat_grads = traverse_util.flatten_dict(grads)
  assert set(flat_grads) == set(flat_masks)
  for key in flat_masks:
    np.testing.assert_allclose(flat_grads[key], effective_grads[key] * flat_params[key],
                               rtol=1e-5, atol=1e-7, err_msg=str(key))


def test_edge_popup_gradient_passes_through_the_absolute_score():
  """Ranking |S|, the estimator is the identity of |S|: dL/dS = dL/d(W*M) * W * sign(S)."""
  search = TinySearch(score_init="edge_popup")
  state = steps.init_search_state(search.scores, search.keep_counts, search.batch_stats,
                                  search.tx, rank_by_magnitude=True)
  signed_masks = masking.compute_masks(search.scores, search.keep_counts)
  (_, _), by_magnitude = steps.score_loss_and_grads(
      search.params, state, search.batch, model=search.model, bn_mode="recalibrate",
      rank_by_magnitude=True)
  # The same masks through the signed estimator: the gradients differ exactly by sign(S).
  (_, _), plain = steps.score_loss_and_grads(
      search.params, state, search.batch, model=search.model, bn_mode="recalibrate")
  flat_scores = traverse_util.flatten_dict(search.scores)
  for key, grad in traverse_util.flatten_dict(by_magnitude).items():
    np.testing.assert_allclose(grad, traverse_util.flatten_dict(plain)[key]
                               * np.sign(flat_scores[key]), rtol=1e-6, atol=1e-9)
  # And the masks themselves rank |S|, not S.
  assert any(np.any(np.asarray(a) != np.asarray(b)) for a, b in zip(
      jax.tree.leaves(state.masks), jax.tree.leaves(signed_masks)))


def test_optimizer_state_holds_moments_for_scores_only(tiny_search):
  momentum = [leaf for leaf in jax.tree.leaves(tiny_search.state.opt_state) if leaf.ndim > 0]
  score_leaves = jax.tree.leaves(tiny_search.state.scores)
  assert sum(m.size for m in momentum) == sum(s.size for s in score_leaves)
  assert sum(s.size for s in score_leaves) < sum(
      p.size for p in jax.tree.leaves(tiny_search.params))


def test_plain_sgd_step_moves_scores_by_minus_lr_times_gradient():
  search = TinySearch(optimizer_config=sgd_config(momentum=0.0, weight_decay=0.0,
                                                  lr_schedule="constant", learning_rate=0.5))
  (_, _), grads = steps.score_loss_and_grads(search.params, search.state, search.batch,
                                             model=search.model, bn_mode="recalibrate")
  new_state, _ = search.step(search.params, search.state, search.batch)
  expected = jax.tree.map(lambda s, g: s - 0.5 * g, search.state.scores, grads)
  for got, want in zip(jax.tree.leaves(new_state.scores), jax.tree.leaves(expected)):
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-6)


def test_eval_step_counts_only_unpadded_examples(tiny_search):
  search = tiny_search
  # The masked network's predictions, from kernels multiplied by their masks by hand: as
  # labels, every example is right, so counting the two padded ones would give 4, not 2.
  flat_masks = traverse_util.flatten_dict(search.state.masks)
  masked_params = traverse_util.unflatten_dict(
      {path: leaf * flat_masks[path] if path in flat_masks else leaf
       for path, leaf in traverse_util.flatten_dict(search.params).items()})
  masked_logits = search.model.apply({"params": masked_params,
                                      "batch_stats": search.batch_stats}, search.batch["image"])
  batch = dict(search.batch, label=jnp.argmax(masked_logits, -1),
               mask=jnp.array([1.0, 1.0, 0.0, 0.0]))
  dense = steps.eval_step(search.params, {"batch_stats": search.batch_stats, "masks": None},
                          batch, model=search.model)
  masked = steps.eval_step(search.params, {"batch_stats": search.batch_stats,
                                           "masks": search.state.masks}, batch, model=search.model)
  assert float(dense["count"]) == float(masked["count"]) == 2.0
  assert float(masked["correct"]) == 2.0
  logits = search.model.apply({"params": search.params, "batch_stats": search.batch_stats},
                              search.batch["image"])
  assert float(dense["correct"]) == float(np.sum(np.argmax(logits[:2], -1) == batch["label"][:2]))
  # The predictions of this random network may agree with or without masks; its losses
  # do not, so they show each count came from its own network.
  for result, network_logits in ((dense, logits), (masked, masked_logits)):
    real = np.asarray(network_logits[:2], np.float64)
    peak = real.max(-1)
    log_sum_exp = np.log(np.exp(real - peak[:, None]).sum(-1)) + peak
    expected = log_sum_exp - real[[0, 1], batch["label"][:2]]
    np.testing.assert_allclose(float(result["loss"]), expected.sum(), rtol=1e-5)
  assert abs(float(masked["loss"]) - float(dense["loss"])) > 1e-3


def test_batch_statistics_are_the_batch_mean_and_variance_of_the_masked_network(tiny_search):
  search = tiny_search
  masks = search.state.masks
  moments = steps.batch_statistics(search.params, {"batch_stats": search.batch_stats,
                                                   "masks": masks},
                                   search.batch, model=search.model)
  kernel = search.params["conv1"]["kernel"] * masks["conv1"]["kernel"]
  features = jax.lax.conv_general_dilated(search.batch["image"], kernel, (1, 1), "SAME",
                                          dimension_numbers=("NHWC", "HWIO", "NHWC"))
  np.testing.assert_allclose(moments["bn1"]["mean"], features.mean(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(moments["bn1"]["var"], features.var(axis=(0, 1, 2)),
                             rtol=1e-4, atol=1e-5)


def test_tune_step_updates_weights_but_never_revives_pruned_ones(tiny_search):
  search = tiny_search
  tx = optax.sgd(0.01, momentum=0.9)
  state = steps.TuneState(step=jnp.zeros((), jnp.int32), params=search.params,
                          opt_state=tx.init(search.params), batch_stats=search.batch_stats)
  tune = jax.jit(functools.partial(steps.tune_step, model=search.model, tx=tx))
  for _ in range(3):
    state, metrics = tune(search.state.masks, state, search.batch)
  assert np.isfinite(float(metrics["loss"]))
  flat_new = traverse_util.flatten_dict(state.params)
  flat_old = traverse_util.flatten_dict(search.params)
  for key, mask in traverse_util.flatten_dict(search.state.masks).items():
    mask = np.asarray(mask)
    np.testing.assert_array_equal(np.asarray(flat_new[key])[~mask], np.asarray(flat_old[key])[~mask])
    assert not np.array_equal(np.asarray(flat_new[key])[mask], np.asarray(flat_old[key])[mask])
  assert MASKS not in state.params


def test_bfloat16_images_make_the_network_compute_in_bfloat16_with_float32_scores(tiny_search):
  batch = {**tiny_search.batch, "image": tiny_search.batch["image"].astype(jnp.bfloat16)}
  program = str(jax.make_jaxpr(tiny_search.step)(tiny_search.params, tiny_search.state, batch))
  convs = [line for line in program.splitlines() if "conv_general_dilated[" in line]
  assert convs and all(":bf16[" in line.split("=")[0] for line in convs)
  state, metrics = tiny_search.step(tiny_search.params, tiny_search.state, batch)
  assert np.isfinite(float(metrics["loss"]))
  for scores, masks, keep in zip(jax.tree.leaves(state.scores), jax.tree.leaves(state.masks),
                                 jax.tree.leaves(tiny_search.keep_counts), strict=True):
    assert scores.dtype == jnp.float32 and int(masks.sum()) == keep
  assert all(s.dtype == jnp.float32 for s in jax.tree.leaves(state.batch_stats))


def _levered(search: TinySearch, keep_ramp=None, flip_cap=None):
  """A search step with a sparsity ramp and a flip cap, per-layer flips logged, and its
  first state (the ramp's start counts)."""
  keep_counts = search.keep_counts
  if keep_ramp is not None:
    keep_counts = jax.tree.unflatten(jax.tree.structure(keep_counts),
                                     [int(k) for k in keep_ramp.counts_at(0)])
  state = steps.init_search_state(search.scores, keep_counts, search.batch_stats, search.tx)
  step = jax.jit(functools.partial(
      steps.search_step, model=search.model, keep_counts=search.keep_counts, tx=search.tx,
      bn_mode="recalibrate", keep_ramp=keep_ramp, flip_cap=flip_cap, flips_per_layer=True))
  return step, state


@pytest.fixture(scope="module")
def ramped_and_capped(tiny_search):
  """Five steps of a ramp over 4 steps from half the plan's sparsity, capped at 12 swaps a
  layer decaying over 5 steps: (ramp, cap, [(state before, state after, metrics)])."""
  search = tiny_search
  sizes = jax.tree.map(lambda s: s.size, search.scores)
  ramp = schedules.keep_ramp(search.keep_counts, sizes, start_sparsity=0.45, sparsity=0.9,
                             ramp_fraction=0.8, total_steps=5)
  cap = schedules.FlipCap(max_flips=12, total_steps=5)
  step, state = _levered(search, ramp, cap)
  history = []
  for _ in range(5):
    new, metrics = step(search.params, state, search.batch)
    history.append((jax.device_get(state), jax.device_get(new), jax.device_get(metrics)))
    state = new
  return ramp, cap, history


def test_ramped_masks_keep_the_cubic_count_of_every_step_in_every_layer(ramped_and_capped):
  ramp, _, history = ramped_and_capped
  assert ramp.steps == 4 and ramp.counts_at(0).tolist() != ramp.end
  for before, after, _ in history:
    for state in (before, after):
      kept = [int(np.sum(mask)) for mask in jax.tree.leaves(state.masks)]
      assert kept == ramp.counts_at(int(state.step)).tolist(), int(state.step)
  assert kept == list(ramp.end)  # after the ramp, the plan's counts


def test_capped_masks_swap_in_at_most_the_cap_of_their_step_per_layer(ramped_and_capped):
  _, cap, history = ramped_and_capped
  capped_somewhere = False
  for before, after, _ in history:
    limit = cap.cap_at(int(before.step))
    for old, new in zip(jax.tree.leaves(before.masks), jax.tree.leaves(after.masks)):
      entered = int(np.sum(new & ~old))
      assert entered <= limit
      capped_somewhere |= entered == limit
  assert capped_somewhere  # the cap did bind


def test_per_layer_flips_count_each_layers_changes_and_sum_to_mask_flips(ramped_and_capped,
                                                                         tiny_search):
  _, _, history = ramped_and_capped
  names = [l.name for l in tiny_search.plan.masked_layers]
  for before, after, metrics in history:
    per_layer = {k[len("mask_flips/"):]: int(v) for k, v in metrics.items()
                 if k.startswith("mask_flips/")}
    assert sorted(per_layer) == sorted(names)
    assert sum(per_layer.values()) == int(metrics["mask_flips"]) > 0
    flat_before = traverse_util.flatten_dict(before.masks)
    for path, mask in traverse_util.flatten_dict(after.masks).items():
      name = ".".join(path[:-1]).replace("_", ".")
      assert per_layer[name] == int(np.sum(mask != flat_before[path]))


def test_without_levers_the_step_reports_todays_metric_keys(tiny_search):
  _, metrics = tiny_search.step(tiny_search.params, tiny_search.state, tiny_search.batch)
  assert set(metrics) == {"loss", "accuracy", "mask_flips", "score_grad_norm", "score_norm"}


def test_a_finished_ramp_and_an_unreached_cap_select_todays_masks_bit_for_bit():
  """The traced keep counts and the cap's selection give the static top-k's masks: the
  plan's at and after the ramp's end, and whole where no layer swaps more than the cap."""
  rng = np.random.default_rng(0)
  old_scores = {f"layer{i}": {"kernel": jnp.asarray(rng.integers(-3, 3, shape) / 2, jnp.float32)}
                for i, shape in enumerate([(3, 3, 4, 8), (16, 10), (200,)])}
  scores = jax.tree.map(lambda s: s + jnp.asarray(rng.integers(0, 2, s.shape), jnp.float32),
                        old_scores)
  keep_counts = {"layer0": {"kernel": 30}, "layer1": {"kernel": 17}, "layer2": {"kernel": 150}}
  today = masking.compute_masks(scores, keep_counts)
  ramp = schedules.keep_ramp(keep_counts, jax.tree.map(lambda s: s.size, scores),
                             start_sparsity=0.3, sparsity=0.9, ramp_fraction=0.5,
                             total_steps=20)
  select = jax.jit(functools.partial(steps.next_masks, keep_counts=keep_counts,
                                     keep_ramp=ramp, flip_cap=schedules.FlipCap(10 ** 6, 20)))
  old = masking.compute_masks(old_scores, keep_counts)
  for step in (ramp.steps - 1, ramp.steps + 5):  # masks for steps ramp.steps and later
    assert _equal_bitwise(select(old, scores, jnp.int32(step)), today)
  assert _equal_bitwise(steps.next_masks(old, scores, jnp.int32(0), keep_counts), today)
