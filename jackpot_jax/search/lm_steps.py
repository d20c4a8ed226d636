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

from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
import optax

from jackpot_jax.models.wrapper import MASKS
from jackpot_jax.search import masking
from jackpot_jax.search import schedules
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
                   flip_cap: schedules.FlipCap | None = None,
                   flips_per_layer: bool = False) -> tuple[SearchState, dict]:
  """One score update of a decoder's masks on a batch {'tokens': int [B, S]}.

  Loss: (1 - w) * next-token CE + w * T^2 * KL(dense || masked) averaged over predicted
  tokens (w = `distill_weight`, T = `distill_temperature`); w = 0 runs no teacher pass.
  dL/dS = dL/d(W * M) * W through the straight-through mask, exactly as the image search;
  `flip_cap` and `flips_per_layer` as `steps.search_step`'s (no sparsity ramp: the search
  starts from a one-shot mask at the target).
  """
  tokens = batch["tokens"]
  teacher = dense_logits(params, tokens, model=model) if distill_weight > 0 else None

  def loss_fn(scores):
    masks = jax.tree.map(masking.straight_through, scores, state.masks)
    logits = model.apply({"params": params, MASKS: masks}, tokens)
    ce = next_token_loss(logits, tokens)
    if teacher is None:
      return ce, (logits, ce, jnp.zeros((), jnp.float32))
    distill = distillation_loss(logits[:, :-1], teacher[:, :-1], distill_temperature)
    return (1.0 - distill_weight) * ce + distill_weight * distill, (logits, ce, distill)

  (loss, (logits, ce, distill)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
      state.scores)
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
  if teacher is not None:
    metrics["distill_loss"] = distill
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
