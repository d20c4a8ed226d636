"""Pure step functions: mask search, masked evaluation and weight tuning.

Every step takes `(frozen, state, batch)` positionally, with the static pieces (model,
keep counts, optimizer) keyword-only and bound by `functools.partial` before `jax.jit`:
`frozen` is what the step reads but never changes (the pre-trained weights for the
search, the jackpot masks for tuning), `state` what it trains (returned updated, with
metrics) or, for evaluation, what it evaluates. Frozen arrays are arguments, not
closures, so they are never baked into the compiled program.
"""

from __future__ import annotations

import functools
from typing import Any

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from jackpot_jax.search import block_targets, masking, schedules
from jackpot_jax.models.layers import BN_MOMENTUM
from jackpot_jax.models.wrapper import MASKS

PyTree = Any
BN_MODES = ("recalibrate", "frozen")
# Which BN statistics a jackpot is evaluated and exported with (search.bn_statistics).
BN_STATISTICS = ("running", "reestimated")
# PyTorch's BatchNorm momentum (the weight of each batch in the running statistics), the
# reference search's; Flax's convention, layers.BN_MOMENTUM = 0.9, is the same rule.
TORCH_BN_MOMENTUM = 0.1


@flax.struct.dataclass
class SearchState:
  """Everything the search changes; the pre-trained params are not part of it.

  `masks` caches top-k(scores): the step needs the current mask for the forward pass and
  the new one to count flips, so keeping it saves one top-k per layer and step.
  """

  step: jax.Array
  scores: PyTree
  masks: PyTree
  opt_state: optax.OptState
  batch_stats: PyTree


@flax.struct.dataclass
class Teacher:
  """The frozen dense network a distilling search learns from: the pre-trained weights
  (the student's too, masked) and the pre-trained BatchNorm running statistics."""

  params: PyTree
  batch_stats: PyTree


@flax.struct.dataclass
class TuneState:
  """Weight tuning with a fixed mask (the paper's "+T" stage)."""

  step: jax.Array
  params: PyTree
  opt_state: optax.OptState
  batch_stats: PyTree


def scores_of(state: Any) -> PyTree:
  """A search state's scores: what a search stage's NaN/Inf guard checks."""
  return state.scores


def params_of(state: Any) -> PyTree:
  """A tuning state's weights: what the tuning stage's guard checks."""
  return state.params


def init_search_state(scores: PyTree, keep_counts: PyTree, batch_stats: PyTree,
                      tx: optax.GradientTransformation,
                      rank_by_magnitude: bool = False) -> SearchState:
  """Optimizer state exists for the scores only: frozen weights get no moments."""
  # device_put: jnp.zeros would compile (or load) two small programs for a scalar.
  return SearchState(step=jax.device_put(np.int32(0)), scores=scores,
                     masks=masking.compiled_masks(scores, keep_counts, rank_by_magnitude),
                     opt_state=tx.init(scores), batch_stats=batch_stats)


def next_masks(old_masks: PyTree, scores: PyTree, step: jax.Array, keep_counts: PyTree, *,
               rank_by_magnitude: bool = False, keep_ramp: schedules.KeepRamp | None = None,
               flip_cap: schedules.FlipCap | None = None) -> PyTree:
  """The masks the forward pass of step `step` + 1 uses, after the update of step `step`.

  Without a ramp or a cap: `masking.compute_masks` at the plan's keep counts. With a
  `keep_ramp`, each layer keeps `keep_ramp.counts(step + 1)`; with a `flip_cap`, at most
  `flip_cap.cap(step)` weights swap in per layer (`masking.cap_flips`).
  """
  if keep_ramp is None and flip_cap is None:
    return masking.compute_masks(scores, keep_counts, rank_by_magnitude)
  rankings, treedef = jax.tree.flatten(masking.ranking_values(scores, rank_by_magnitude))
  if keep_ramp is None:
    masks = treedef.flatten_up_to(masking.compute_masks(scores, keep_counts, rank_by_magnitude))
  else:
    masks = masking.topk_masks_traced(rankings, keep_ramp.counts(step + 1))
  if flip_cap is not None:
    if any(isinstance(rule, masking.NMPattern) for rule in treedef.flatten_up_to(keep_counts)):
      raise ValueError("search.max_flips_per_step caps top-k swaps; an N:M pattern has none")
    masks = masking.cap_flips(treedef.flatten_up_to(old_masks), masks, rankings,
                              flip_cap.cap(step))
  return jax.tree.unflatten(treedef, masks)


def flip_metrics(old_masks: PyTree, new_masks: PyTree, per_layer: bool) -> dict:
  """{"mask_flips": all layers' changed entries} and, with `per_layer`, one
  "mask_flips/<layer name>" a layer (TensorBoard shows them as one group)."""
  metrics = {"mask_flips": masking.count_flips(old_masks, new_masks)}
  if per_layer:
    metrics.update({f"mask_flips/{name}": flips for name, flips
                    in masking.flips_per_layer(old_masks, new_masks).items()})
  return metrics


def cross_entropy(logits: jax.Array, labels: jax.Array, label_smoothing: float = 0.0,
                  weights: jax.Array | None = None) -> jax.Array:
  """Mean softmax cross-entropy with optional label smoothing and example weights."""
  targets = jax.nn.one_hot(labels, logits.shape[-1], dtype=jnp.float32)
  if label_smoothing:
    targets = optax.smooth_labels(targets, label_smoothing)
  losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  if weights is None:
    return jnp.mean(losses)
  return jnp.sum(losses * weights) / jnp.maximum(jnp.sum(weights), 1.0)


def _forward(model: nn.Module, variables: dict, images: jax.Array, bn_mode: str):
  """Runs the model in the BN mode the search uses; returns (logits, new batch_stats)."""
  if bn_mode == "recalibrate":
    logits, updates = model.apply(variables, images, train=True, mutable=["batch_stats"])
    return logits, updates.get("batch_stats", variables["batch_stats"])  # {}: no BatchNorm
  if bn_mode == "frozen":
    return model.apply(variables, images, train=False), variables["batch_stats"]
  raise ValueError(f"unknown search.bn_mode {bn_mode!r}; choose one of {BN_MODES}")


def _variables(params: PyTree, batch_stats: PyTree, masks: PyTree | None) -> dict:
  """Flax variables of W * masks (dense W when `masks` is None), masks as float."""
  variables = {"params": params, "batch_stats": batch_stats}
  if masks is not None:
    variables[MASKS] = jax.tree.map(lambda m: m.astype(jnp.float32), masks)
  return variables


def _accuracy(logits: jax.Array, labels: jax.Array) -> jax.Array:
  return jnp.mean(jnp.argmax(logits, -1) == labels)


def distillation_loss(student_logits: jax.Array, teacher_logits: jax.Array,
                      temperature: float) -> jax.Array:
  """Hinton et al. (2015): T^2 * KL(softmax(teacher/T) || softmax(student/T)), batch mean.

  The T^2 keeps the term's gradient on the scale of the cross-entropy's whatever T is
  (the soft targets' gradients shrink as 1/T^2), so the weight means the same for every T.
  T = 4, search.distill_temperature's default: Hinton et al. found 2.5-4 best for a much
  smaller student (and every T above 8 alike for a large one), and 4 is the CIFAR setting
  of the common distillation baselines (Zagoruyko & Komodakis 2017; Tian et al. 2020,
  with w = 0.9). T = 1 matches the plain softmax outputs.
  """
  teacher = jax.nn.log_softmax(teacher_logits.astype(jnp.float32) / temperature)
  student = jax.nn.log_softmax(student_logits.astype(jnp.float32) / temperature)
  kl = jnp.sum(jnp.exp(teacher) * (teacher - student), axis=-1)
  return temperature ** 2 * jnp.mean(kl)


def check_distillation(search: Any) -> None:
  """Raises ValueError (one line) for search.distill_weight outside [0, 1] or a
  search.distill_temperature that is not positive."""
  if not 0.0 <= search.distill_weight <= 1.0:
    raise ValueError(f"search.distill_weight must be in [0, 1] (0: no distillation), got "
                     f"{search.distill_weight}")
  if search.distill_temperature <= 0:
    raise ValueError(f"search.distill_temperature must be positive, got "
                     f"{search.distill_temperature}")


def teacher_forward(teacher: Teacher, images: jax.Array, *, model: nn.Module) -> jax.Array:
  """The dense pre-trained network's logits: no masks, BN in eval mode with the pre-trained
  statistics, no gradient (the teacher is a constant of the step)."""
  return dense_targets(teacher, images, model=model)[0]


def dense_targets(teacher: Teacher, images: jax.Array, *, model: nn.Module,
                  blocks: tuple[type, ...] = ()) -> tuple[jax.Array, list, list]:
  """`teacher_forward`'s logits and, with `blocks` (`block_targets`), every block's input
  and output in the same pass: (logits, block inputs, block outputs), none with a gradient."""
  variables = _variables(teacher.params, teacher.batch_stats, None)
  apply = functools.partial(model.apply, variables, images, train=False)
  if not blocks:
    return jax.lax.stop_gradient(apply()), [], []
  logits, calls = block_targets.apply_recording_blocks(apply, blocks)
  return jax.lax.stop_gradient((logits, calls.inputs, calls.outputs))


def score_loss_and_grads(params: PyTree, state: SearchState, batch: dict, *,
                         model: nn.Module, bn_mode: str, label_smoothing: float = 0.0,
                         rank_by_magnitude: bool = False,
                         teacher_logits: jax.Array | None = None,
                         distill_weight: float = 0.0, distill_temperature: float = 1.0):
  """Loss and dL/dS through the straight-through mask: dL/dS = dL/d(W*M) * W.

  With `rank_by_magnitude` (edge-popup) the mask is top-k of |S| and the estimator passes
  through |S|: dL/dS = dL/d(W*M) * W * sign(S). With `teacher_logits` the loss is
  (1 - w) * CE + w * distillation_loss(T) (w = `distill_weight`, T = `distill_temperature`);
  without, it is the cross-entropy alone, traced exactly as before distillation existed.
  The block-wise targets are `_loss_and_grads`'s.

  Returns:
    ((loss, (logits, new batch_stats)), score gradients).
  """
  (loss, (logits, batch_stats, _)), grads = _loss_and_grads(
      params, state, batch, model=model, bn_mode=bn_mode, label_smoothing=label_smoothing,
      rank_by_magnitude=rank_by_magnitude, teacher_logits=teacher_logits,
      distill_weight=distill_weight, distill_temperature=distill_temperature)
  return (loss, (logits, batch_stats)), grads


def _loss_and_grads(params: PyTree, state: SearchState, batch: dict, *, model: nn.Module,
                    bn_mode: str, label_smoothing: float, rank_by_magnitude: bool,
                    teacher_logits: jax.Array | None, distill_weight: float,
                    distill_temperature: float, blocks: tuple[type, ...] = (),
                    dense_block_outputs: list | None = None, feature_weight: float = 0.0,
                    dense_block_inputs: list | None = None):
  """`score_loss_and_grads`, with the block-wise terms and the feature loss in the aux.

  With `blocks` the feature loss against `dense_block_outputs` is measured. With
  `dense_block_inputs` (the local stage) every block reads the dense network's input to
  it and the loss is that feature loss alone: each block's scores learn to reproduce the
  dense block's output from the dense block's input. Otherwise `feature_weight` times the
  feature loss is added to the end-to-end loss.

  Returns:
    ((loss, (logits, new batch_stats, feature loss or 0)), score gradients).
  """
  local = dense_block_inputs is not None

  def loss_fn(scores):
    masks = jax.tree.map(masking.straight_through,
                         masking.ranking_values(scores, rank_by_magnitude), state.masks)
    variables = {"params": params, "batch_stats": state.batch_stats, MASKS: masks}
    forward = functools.partial(_forward, model, variables, batch["image"], bn_mode)
    if not blocks:
      logits, batch_stats = forward()
      features = jnp.zeros((), jnp.float32)
    else:
      (logits, batch_stats), calls = block_targets.apply_recording_blocks(
          forward, blocks, dense_block_inputs)
      features = block_targets.feature_loss(calls.outputs, dense_block_outputs)
    if local:
      return features, (logits, batch_stats, features)
    loss = cross_entropy(logits, batch["label"], label_smoothing)
    if teacher_logits is not None:
      loss = ((1.0 - distill_weight) * loss
              + distill_weight * distillation_loss(logits, teacher_logits, distill_temperature))
    if feature_weight:
      loss = loss + feature_weight * features
    return loss, (logits, batch_stats, features)

  return jax.value_and_grad(loss_fn, has_aux=True)(state.scores)


def _with_bn_momentum(old: PyTree, updated: PyTree, momentum: float) -> PyTree:
  """Running statistics as if BN's momentum were `momentum` (PyTorch's convention).

  Flax's update is old + (1 - BN_MOMENTUM) * (batch - old), so updated - old is that
  fraction of (batch - old): rescaling it changes the momentum without touching a model.
  """
  scale = momentum / (1.0 - BN_MOMENTUM)
  return jax.tree.map(lambda o, u: o + scale * (u - o), old, updated)


def search_step(params: PyTree, state: SearchState, batch: dict, *, model: nn.Module,
                keep_counts: PyTree, tx: optax.GradientTransformation, bn_mode: str,
                label_smoothing: float = 0.0, rank_by_magnitude: bool = False,
                bn_momentum: float = TORCH_BN_MOMENTUM,
                keep_ramp: schedules.KeepRamp | None = None,
                flip_cap: schedules.FlipCap | None = None,
                flips_per_layer: bool = False) -> tuple[SearchState, dict]:
  """One score update: straight-through top-k forward/backward, optax update, new masks.

  Gradients are taken with respect to the scores only, so BN affine parameters, biases
  and weights are untouched by construction; batch statistics follow `bn_mode`, updated
  with `bn_momentum` (PyTorch's convention) under "recalibrate".
  `rank_by_magnitude` ranks |score| (edge-popup) instead of the signed score.
  `keep_ramp` and `flip_cap` change how the next masks are chosen (`next_masks`);
  `flips_per_layer` adds each layer's flips to the metrics (`flip_metrics`).
  """
  state, metrics, _ = _update_scores(
      params, state, batch, model=model, keep_counts=keep_counts, tx=tx, bn_mode=bn_mode,
      label_smoothing=label_smoothing, rank_by_magnitude=rank_by_magnitude,
      bn_momentum=bn_momentum, keep_ramp=keep_ramp, flip_cap=flip_cap,
      flips_per_layer=flips_per_layer)
  return state, metrics


def distill_search_step(teacher: Teacher, state: SearchState, batch: dict, *,
                        distill_weight: float, distill_temperature: float,
                        model: nn.Module, feature_weight: float = 0.0, local: bool = False,
                        blocks: tuple[type, ...] = (),
                        **search_statics) -> tuple[SearchState, dict]:
  """`search_step` whose loss also learns from the dense network: its logits
  (`distillation_loss`, weight `distill_weight`) and, with `blocks`, its block outputs.

  One extra forward pass of the dense network per step, in the same program; the student
  is the masked network exactly as in `search_step`. Its frozen argument is the `Teacher`
  (the student reads the same weights). `feature_weight` adds that multiple of the
  per-block `block_targets.feature_loss` to the loss; `local` makes it the step of the
  local stage instead (every block fed the dense block's input, the feature loss alone).
  The two are separate programs the loop switches between (`loop.Stage.first_step`): a
  `lax.cond` between them ran the convolutions ~9x slower on a CPU. `search_statics` are
  `search_step`'s.
  """
  targets, dense_inputs, dense_outputs = dense_targets(teacher, batch["image"], model=model,
                                                       blocks=blocks)
  loss_and_grads = functools.partial(
      _loss_and_grads, teacher_logits=targets if distill_weight > 0 else None,
      distill_weight=distill_weight, distill_temperature=distill_temperature, blocks=blocks,
      dense_block_outputs=dense_outputs, feature_weight=feature_weight,
      dense_block_inputs=dense_inputs if local else None)
  state, metrics, (logits, features) = _update_scores(
      teacher.params, state, batch, model=model, loss_and_grads=loss_and_grads,
      **search_statics)
  if distill_weight > 0:
    metrics["distill_loss"] = distillation_loss(logits, targets, distill_temperature)
  if blocks:
    metrics["feature_loss"] = features
    metrics["local_stage"] = jnp.float32(local)
  return state, metrics


def _update_scores(params: PyTree, state: SearchState, batch: dict, *, model: nn.Module,
                   keep_counts: PyTree, tx: optax.GradientTransformation, bn_mode: str,
                   label_smoothing: float = 0.0, rank_by_magnitude: bool = False,
                   bn_momentum: float = TORCH_BN_MOMENTUM,
                   teacher_logits: jax.Array | None = None, distill_weight: float = 0.0,
                   distill_temperature: float = 1.0,
                   keep_ramp: schedules.KeepRamp | None = None,
                   flip_cap: schedules.FlipCap | None = None,
                   flips_per_layer: bool = False,
                   loss_and_grads=None) -> tuple[SearchState, dict, tuple]:
  """The update both search steps share: (new state, metrics, (the student's logits, its
  feature loss)). `loss_and_grads` (a `_loss_and_grads` with its loss terms bound)
  replaces the plain loss."""
  if loss_and_grads is None:
    loss_and_grads = functools.partial(
        _loss_and_grads, teacher_logits=teacher_logits, distill_weight=distill_weight,
        distill_temperature=distill_temperature)
  (loss, (logits, batch_stats, features)), grads = loss_and_grads(
      params, state, batch, model=model, bn_mode=bn_mode, label_smoothing=label_smoothing,
      rank_by_magnitude=rank_by_magnitude)
  if bn_mode == "recalibrate" and bn_momentum != TORCH_BN_MOMENTUM:
    batch_stats = _with_bn_momentum(state.batch_stats, batch_stats, bn_momentum)
  updates, opt_state = tx.update(grads, state.opt_state, state.scores)
  scores = optax.apply_updates(state.scores, updates)
  masks = next_masks(state.masks, scores, state.step, keep_counts,
                     rank_by_magnitude=rank_by_magnitude, keep_ramp=keep_ramp,
                     flip_cap=flip_cap)
  metrics = {
      "loss": loss,
      "accuracy": _accuracy(logits, batch["label"]),
      **flip_metrics(state.masks, masks, flips_per_layer),
      "score_grad_norm": optax.tree.norm(grads),
      "score_norm": optax.tree.norm(scores),
  }
  new_state = state.replace(step=state.step + 1, scores=scores, masks=masks,
                            opt_state=opt_state, batch_stats=batch_stats)
  return new_state, metrics, (logits, features)


def tune_step(masks: PyTree | None, state: TuneState, batch: dict, *, model: nn.Module,
              tx: optax.GradientTransformation,
              label_smoothing: float = 0.0) -> tuple[TuneState, dict]:
  """Trains the weights with the jackpot mask fixed; `masks=None` is dense training.

  The forward pass uses W * M, so pruned weights receive zero gradient; the caller
  re-applies the mask at export, so an optimizer with weight decay cannot revive them.
  Dense training is also the baseline the search step's overhead is measured on.
  """

  def loss_fn(params):
    logits, batch_stats = _forward(model, _variables(params, state.batch_stats, masks),
                                   batch["image"], "recalibrate")
    return cross_entropy(logits, batch["label"], label_smoothing), (logits, batch_stats)

  (loss, (logits, batch_stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params)
  updates, opt_state = tx.update(grads, state.opt_state, state.params)
  params = optax.apply_updates(state.params, updates)
  metrics = {"loss": loss, "accuracy": _accuracy(logits, batch["label"]),
             "grad_norm": optax.tree.norm(grads)}
  return state.replace(step=state.step + 1, params=params, opt_state=opt_state,
                       batch_stats=batch_stats), metrics


def batch_statistics(params: PyTree, evaluated: dict, batch: dict, *,
                     model: nn.Module) -> PyTree:
  """The BatchNorm statistics of one batch through the network `evaluated` describes
  ({"batch_stats": ..., "masks": ...}), in the batch_stats tree's layout.

  The train-mode forward runs from zeroed running statistics, so its update is
  (1 - momentum) * the batch's own mean and variance; dividing by (1 - momentum) recovers
  them. Averaging these over batches re-estimates the statistics exactly.
  """
  zeros = jax.tree.map(jnp.zeros_like, evaluated["batch_stats"])
  _, updated = _forward(model, _variables(params, zeros, evaluated.get("masks")),
                        batch["image"], "recalibrate")
  return jax.tree.map(lambda x: x / (1.0 - BN_MOMENTUM), updated)


def eval_step(params: PyTree, evaluated: dict, batch: dict, *, model: nn.Module) -> dict:
  """Sums of correct predictions, loss and examples of the network `evaluated` describes:
  {"batch_stats": ..., "masks": ...}, with masks None for the dense network.

  `batch['mask']` (1 for real examples, 0 for padding) lets the last partial batch be
  padded to a fixed shape without counting the padding.
  """
  logits = model.apply(_variables(params, evaluated["batch_stats"], evaluated.get("masks")),
                       batch["image"], train=False)
  weights = batch.get("mask", jnp.ones(batch["label"].shape, jnp.float32)).astype(jnp.float32)
  targets = jax.nn.one_hot(batch["label"], logits.shape[-1])
  losses = optax.softmax_cross_entropy(logits.astype(jnp.float32), targets)
  correct = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
  return {"correct": jnp.sum(correct * weights), "loss": jnp.sum(losses * weights),
          "count": jnp.sum(weights)}
