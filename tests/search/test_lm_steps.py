"""The language-model search step on a tiny random Llama: its loss is the next-token
cross-entropy perplexity measures, its score gradient the straight-through one, its
distillation the dense decoder's, and its masks keep the pattern."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import traverse_util

from jackpot_jax.models.llama import Llama, is_block_projection
from jackpot_jax.models.wrapper import masked
from jackpot_jax.run.perplexity import nll_sums
from jackpot_jax.search import lm_steps, masking, schedules, steps
from jackpot_jax.search.masking import NMPattern

MODEL = masked(Llama(vocab_size=40, hidden_size=16, intermediate_size=24, num_hidden_layers=2,
                     num_attention_heads=2, num_key_value_heads=1, tie_word_embeddings=True),
               is_block_projection)
TOKENS = jax.random.randint(jax.random.PRNGKey(1), (4, 9), 0, 40)
PATTERN = NMPattern(2, 4)


@pytest.fixture(scope="module")
def params():
  return MODEL.init(jax.random.PRNGKey(0), TOKENS)["params"]


def _projections(tree):
  return {path: leaf for path, leaf in traverse_util.flatten_dict(tree).items()
          if is_block_projection(path, np.shape(leaf))}


def _start(params, seed: int = 2):
  """Random scores over every block projection, their 2:4 rules and a search state."""
  keys = jax.random.split(jax.random.PRNGKey(seed), len(_projections(params)))
  scores = traverse_util.unflatten_dict(
      {path: jax.random.uniform(key, leaf.shape)
       for key, (path, leaf) in zip(keys, _projections(params).items())})
  rules = jax.tree.map(lambda _: PATTERN, scores)
  tx = optax.sgd(0.5)
  return steps.init_search_state(scores, rules, {}, tx), rules, tx


def test_the_loss_is_the_next_token_nll_perplexity_measures(params):
  state, rules, tx = _start(params)
  _, metrics = lm_steps.lm_search_step(params, state, {"tokens": TOKENS}, model=MODEL,
                                       keep_counts=rules, tx=tx)
  masks = jax.tree.map(lambda m: m.astype(jnp.float32), state.masks)
  sums = nll_sums(params, masks, {"tokens": TOKENS, "mask": jnp.ones(4, bool)}, model=MODEL)
  assert float(metrics["loss"]) == pytest.approx(float(sums["nll"] / sums["tokens"]), rel=1e-6)
  assert int(sums["tokens"]) == 4 * 8


def test_score_gradient_is_the_masked_weights_gradient_times_the_weight(params):
  """dL/dS = dL/d(W * M) * W: the straight-through estimator of the image search."""
  state, _, _ = _start(params)
  grads = jax.grad(lambda s: lm_steps.next_token_loss(MODEL.apply(
      {"params": params, "masks": jax.tree.map(masking.straight_through, s, state.masks)},
      TOKENS), TOKENS))(state.scores)
  flat_params = traverse_util.flatten_dict(params)
  flat_masks = traverse_util.flatten_dict(state.masks)

  def loss_of_effective(effective):
    merged = dict(flat_params)
    merged.update(effective)
    return lm_steps.next_token_loss(
        MODEL.apply({"params": traverse_util.unflatten_dict(merged)}, TOKENS), TOKENS)

  effective = {path: flat_params[path] * mask for path, mask in flat_masks.items()}
  by_weight = jax.grad(loss_of_effective)(effective)
  for path, grad in traverse_util.flatten_dict(grads).items():
    np.testing.assert_allclose(grad, by_weight[path] * flat_params[path], rtol=1e-4,
                               atol=1e-7, err_msg=str(path))


def test_the_step_keeps_two_of_every_four_and_counts_its_flips(params):
  state, rules, tx = _start(params)
  new, metrics = jax.jit(functools.partial(lm_steps.lm_search_step, model=MODEL,
                                           keep_counts=rules, tx=tx))(
      params, state, {"tokens": TOKENS})
  flips = 0
  for old, mask in zip(jax.tree.leaves(state.masks), jax.tree.leaves(new.masks)):
    assert np.all(np.asarray(masking.nm_group_counts(mask, 4)) == 2)
    flips += int(np.sum(np.asarray(old) != np.asarray(mask)))
  assert flips == int(metrics["mask_flips"]) > 0
  assert int(new.step) == 1


def test_a_capped_unstructured_step_swaps_at_most_the_cap_and_logs_flips_per_layer(params):
  state, _, tx = _start(params)
  rules = jax.tree.map(lambda s: s.size // 2, state.scores)
  state = steps.init_search_state(state.scores, rules, {}, tx)
  cap = schedules.FlipCap(max_flips=2, total_steps=10)
  step = jax.jit(functools.partial(lm_steps.lm_search_step, model=MODEL, keep_counts=rules,
                                   tx=optax.sgd(50.0), flip_cap=cap, flips_per_layer=True))
  new, metrics = step(params, state, {"tokens": TOKENS})
  per_layer = {k: int(v) for k, v in metrics.items() if k.startswith("mask_flips/")}
  assert len(per_layer) == len(jax.tree.leaves(rules))
  assert sum(per_layer.values()) == int(metrics["mask_flips"]) > 0
  for old, mask, kept in zip(jax.tree.leaves(state.masks), jax.tree.leaves(new.masks),
                             jax.tree.leaves(rules)):
    assert int(np.sum(mask)) == kept and int(np.sum(mask & ~np.asarray(old))) <= 2
  assert max(per_layer.values()) == 4  # the cap did bind: two in, two out


def test_distillation_from_the_unmasked_decoder_is_zero_with_nothing_pruned(params):
  """With every weight kept the student is the teacher: KL 0, and the weighted loss is
  (1 - w) times the cross-entropy."""
  state, _, tx = _start(params)
  ones = jax.tree.map(jnp.ones_like, state.masks)
  rules = jax.tree.map(lambda m: int(m.size), ones)
  state = state.replace(masks=ones)
  _, metrics = lm_steps.lm_search_step(params, state, {"tokens": TOKENS}, model=MODEL,
                                       keep_counts=rules, tx=tx, distill_weight=0.25,
                                       distill_temperature=2.0)
  assert float(metrics["distill_loss"]) == pytest.approx(0.0, abs=1e-5)
  assert float(metrics["loss"]) == pytest.approx(0.75 * float(metrics["lm_loss"]), rel=1e-5)


def test_distillation_changes_the_gradient_and_matches_the_kl_of_the_logits(params):
  state, rules, tx = _start(params)
  batch = {"tokens": TOKENS}
  plain, _ = lm_steps.lm_search_step(params, state, batch, model=MODEL, keep_counts=rules,
                                     tx=tx)
  state, _, _ = _start(params)
  distilled, metrics = lm_steps.lm_search_step(params, state, batch, model=MODEL,
                                               keep_counts=rules, tx=tx, distill_weight=1.0,
                                               distill_temperature=1.0)
  student = MODEL.apply({"params": params, "masks": jax.tree.map(
      lambda m: m.astype(jnp.float32), _start(params)[0].masks)}, TOKENS)
  teacher = MODEL.apply({"params": params}, TOKENS)
  expected = steps.distillation_loss(student[:, :-1], teacher[:, :-1], 1.0)
  assert float(metrics["distill_loss"]) == pytest.approx(float(expected), rel=1e-5)
  assert float(metrics["loss"]) == pytest.approx(float(expected), rel=1e-5)
  assert any(not np.allclose(a, b) for a, b in zip(jax.tree.leaves(plain.scores),
                                                   jax.tree.leaves(distilled.scores)))


def test_block_targets_read_the_residual_stream_after_each_decoder_layer(params):
  """The feature loss compares each decoder layer's output with the dense decoder's: all
  weights kept, it is zero; at 2:4 it is positive and the loss adds its weighted share;
  the local stage's loss is that feature loss alone, with every layer fed the dense input."""
  from jackpot_jax.models.llama import DecoderLayer
  state, rules, tx = _start(params)
  batch = {"tokens": TOKENS}
  step = functools.partial(lm_steps.lm_search_step, params, model=MODEL, keep_counts=rules,
                           tx=tx, blocks=(DecoderLayer,))
  dense_state = state.replace(masks=jax.tree.map(jnp.ones_like, state.masks))
  _, dense = step(dense_state, batch, feature_weight=1.0)
  assert float(dense["feature_loss"]) == 0.0
  _, plain = step(state, batch)
  _, weighted = step(state, batch, feature_weight=2.0)
  assert float(weighted["feature_loss"]) > 0.0
  assert float(weighted["loss"]) == pytest.approx(
      float(plain["loss"]) + 2.0 * float(weighted["feature_loss"]), rel=1e-5)
  assert float(weighted["local_stage"]) == 0.0
  local_state, local = step(state, batch, feature_weight=2.0, local=True)
  assert float(local["local_stage"]) == 1.0
  assert float(local["loss"]) == float(local["feature_loss"]) > 0.0
  for mask, start in zip(jax.tree.leaves(local_state.masks), jax.tree.leaves(state.masks)):
    assert int(mask.sum()) == int(start.sum())
