"""Pure step functions of the language-model search: scores over a frozen causal decoder.

The same method as `steps.search_step` (scores, exact top-k or top-N of every group,
straight-through, the optax update), with the causal-LM loss in place of the classifier's
cross-entropy: every token after the first of a sequence is predicted from the tokens
before it. With `distill_weight` > 0 the loss also distils the dense decoder's next-token
distributions (`steps.distillation_loss` per predicted token); the teacher reads the same
frozen weights without masks, so the step's frozen argument is the params in both cases.
A decoder has no BatchNorm: the state's batch_stats stay an empty tree.
"""

from __future__ import annotations

import functools
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jackpot_jax.models.wrapper import MASKS
from jackpot_jax.search import block_targets, masking, schedules
from jackpot_jax.search.steps import SearchState, distillation_loss, flip_metrics, next_masks

PyTree = Any


def next_token_loss(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Mean next-token cross-entropy of logits [B, S, V] for tokens [B, S] (S - 1
  predictions a sequence), in float32."""
  predicted = logits[:, :-1].astype(jnp.float32)
  return jnp.mean(optax.softmax_cross_entropy_with_integer_labels(predicted, tokens[:, 1:]))


def next_token_accuracy(logits: jax.Array, tokens: jax.Array) -> jax.Array:
  """Fraction of next tokens the logits rank first."""
  return jnp.mean(jnp.argmax(logits[:, :-1], -1) == tokens[:, 1:])


def dense_logits(params: PyTree, tokens: jax.Array, *, model: nn.Module) -> jax.Array:
  """The frozen dense decoder's logits, a constant of the step (no gradient)."""
  return jax.lax.stop_gradient(model.apply({"params": params}, tokens))


def lm_search_step(params: PyTree, state: SearchState, batch: dict, *, model: nn.Module,
                   keep_counts: PyTree, tx: optax.GradientTransformation,
                   distill_weight: float = 0.0, distill_temperature: float = 1.0,
                   feature_weight: float = 0.0, local: bool = False,
                   blocks: tuple[type, ...] = (),
                   flip_cap: schedules.FlipCap | None = None,
                   flips_per_layer: bool = False) -> tuple[SearchState, dict]:
  """One score update of a decoder's masks on a batch {'tokens': int [B, S]}.

  Loss: (1 - w) * next-token CE + w * T^2 * KL(dense || masked) averaged over predicted
  tokens (w = `distill_weight`, T = `distill_temperature`); w = 0 runs no teacher pass.
  `feature_weight` adds that multiple of the per-block feature loss against the dense
  decoder's residual stream after each block in `blocks` (`block_targets.feature_loss`);
  `local` makes it a step of the local stage: that loss alone, every block fed the dense
  block's input (`steps.distill_search_step`'s local stage).
  dL/dS = dL/d(W * M) * W through the straight-through mask, exactly as the image search;
  `flip_cap` and `flips_per_layer` as `steps.search_step`'s (no sparsity ramp: the search
  starts from a one-shot mask at the target).
  """
  tokens = batch["tokens"]
  use_blocks = bool(blocks)
  teacher, dense_inputs, dense_outputs = None, None, None
  if use_blocks:
    dense = functools.partial(model.apply, {"params": params}, tokens)
    teacher, calls = block_targets.apply_recording_blocks(dense, blocks)
    teacher, dense_inputs, dense_outputs = jax.lax.stop_gradient(
        (teacher, calls.inputs, calls.outputs))
  elif distill_weight > 0:
    teacher = dense_logits(params, tokens, model=model)

  def loss_fn(scores):
    masks = jax.tree.map(masking.straight_through, scores, state.masks)
    apply = functools.partial(model.apply, {"params": params, MASKS: masks}, tokens)
    features = jnp.zeros((), jnp.float32)
    if use_blocks:
      logits, calls = block_targets.apply_recording_blocks(
          apply, blocks, dense_inputs if local else None)
      features = block_targets.feature_loss(calls.outputs, dense_outputs)
    else:
      logits = apply()
    ce = next_token_loss(logits, tokens)
    if local:
      return features, (logits, ce, jnp.zeros((), jnp.float32), features)
    loss, distill = ce, jnp.zeros((), jnp.float32)
    if distill_weight > 0:
      distill = distillation_loss(logits[:, :-1], teacher[:, :-1], distill_temperature)
      loss = (1.0 - distill_weight) * ce + distill_weight * distill
    if feature_weight:
      loss = loss + feature_weight * features
    return loss, (logits, ce, distill, features)

  (loss, (logits, ce, distill, features)), grads = jax.value_and_grad(
      loss_fn, has_aux=True)(state.scores)
  updates, opt_state = tx.update(grads, state.opt_state, state.scores)
  scores = optax.apply_updates(state.scores, updates)
  masks = next_masks(state.masks, scores, state.step, keep_counts, flip_cap=flip_cap)
  metrics = {
      "loss": loss,
      "lm_loss": ce,
      "accuracy": next_token_accuracy(logits, tokens),
      **flip_metrics(state.masks, masks, flips_per_layer),
      "score_grad_norm": optax.tree.norm(grads),
      "score_norm": optax.tree.norm(scores),
  }
  if distill_weight > 0:
    metrics["distill_loss"] = distill
  if use_blocks:
    metrics["feature_loss"] = features
    metrics["local_stage"] = jnp.float32(local)
  return state.replace(step=state.step + 1, scores=scores, masks=masks,
                       opt_state=opt_state), metrics


def lm_train_step(masks: PyTree | None, state: Any, batch: dict, *, model: nn.Module,
                  tx: optax.GradientTransformation) -> tuple[Any, dict]:
  """Dense (or fixed-mask) training of the decoder's weights on the next-token loss: the
  step the search's cost is measured against (`benchmarks/step_speed.py`).

  `state` is a `steps.TuneState` (params, opt_state, step; batch_stats unused)."""
  tokens = batch["tokens"]

  def loss_fn(params):
    variables = {"params": params} if masks is None else {"params": params, MASKS: masks}
    return next_token_loss(model.apply(variables, tokens), tokens)

  loss, grads = jax.value_and_grad(loss_fn)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  return state.replace(step=state.step + 1, params=optax.apply_updates(state.params, updates),
                       opt_state=opt_state), {"loss": loss,
                                              "grad_norm": optax.tree.norm(grads)}
