"""Masks that common pruning criteria choose at the plan's keep counts.

The paper compares the searched jackpot with what magnitude, random, SNIP (first-order
Taylor), GraSP and SynFlow would keep on the same pre-trained weights and keep counts.
Each criterion gives a saliency per weight; the mask keeps the `k` most salient, with the
same exact top-k as the search, so overlaps compare like with like.
"""

from __future__ import annotations

from typing import Any, Callable, Iterable

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jackpot_jax import dispatch, masking, steps
from jackpot_jax.sparsity import SparsityPlan

CRITERIA = ("magnitude", "random", "snip", "grasp", "synflow")
PyTree = Any


def _kernels(params: PyTree, plan: SparsityPlan) -> dict:
  flat = traverse_util.flatten_dict(params)
  return {l.path + ("kernel",): flat[l.path + ("kernel",)] for l in plan.masked_layers}


def _with_kernels(params: PyTree, kernels: dict) -> PyTree:
  flat = dict(traverse_util.flatten_dict(params))
  flat.update(kernels)
  return traverse_util.unflatten_dict(flat)


def _loss_fn(model: nn.Module, batch_stats: PyTree, batch: dict) -> Callable:
  """Loss of the dense model as a function of the masked layers' kernels."""

  def loss(params, kernels):
    logits = model.apply({"params": _with_kernels(params, kernels), "batch_stats": batch_stats},
                         batch["image"], train=False)
    return steps.cross_entropy(logits, batch["label"])

  return loss


def snip_saliency(model, params, batch_stats, plan, batches) -> dict:
  """|w * dL/dw| (SNIP, Lee et al. 2019; first-order Taylor), gradients averaged over batches."""
  kernels = _kernels(params, plan)
  grad = jax.jit(lambda b: jax.grad(_loss_fn(model, batch_stats, b), argnums=1)(params, kernels))
  grads = dispatch.mean_over_batches(grad, batches)
  return {k: jnp.abs(kernels[k] * grads[k]) for k in kernels}


def grasp_saliency(model, params, batch_stats, plan, batches) -> dict:
  """-w * (H g) (GraSP, Wang et al. 2020): removing high scores least reduces gradient flow.

  Hg is a Hessian-gradient product by forward-over-reverse differentiation; the weights
  kept are those with the lowest GraSP score, so the saliency returned is its negation.
  """
  kernels = _kernels(params, plan)

  def hessian_gradient(batch):
    loss = lambda k: _loss_fn(model, batch_stats, batch)(params, k)
    gradient = jax.lax.stop_gradient(jax.grad(loss)(kernels))
    return jax.jvp(jax.grad(loss), (kernels,), (gradient,))[1]

  hg = dispatch.mean_over_batches(hessian_gradient, batches)
  return {k: kernels[k] * hg[k] for k in kernels}  # = -(GraSP score); keep the largest


def synflow_saliency(model, params, batch_stats, plan, input_shape) -> dict:
  """|w * dR/dw| with R = sum of the network's output on an all-ones input, every
  parameter replaced by its absolute value (SynFlow, Tanaka et al. 2020; one shot)."""
  kernels = _kernels(params, plan)
  abs_params = jax.tree.map(jnp.abs, params)
  ones = jnp.ones((1,) + tuple(input_shape), jnp.float32)
  # Unit running statistics: BN then scales by |gamma| and shifts by |beta| only, so the
  # network stays a positive linear-path sum as SynFlow assumes.
  unit_stats = traverse_util.unflatten_dict({
      k: (jnp.zeros_like(v) if k[-1] == "mean" else jnp.ones_like(v))
      for k, v in traverse_util.flatten_dict(batch_stats).items()})

  def total(k):
    variables = {"params": _with_kernels(abs_params, k), "batch_stats": unit_stats}
    return jnp.sum(model.apply(variables, ones, train=False))

  abs_kernels = jax.tree.map(jnp.abs, kernels)
  grads = jax.jit(jax.grad(total))(abs_kernels)
  return {k: jnp.abs(abs_kernels[k] * grads[k]) for k in kernels}


def criterion_masks(criterion: str, *, model, params, batch_stats, plan: SparsityPlan,
                    batches: Iterable[dict] = (), input_shape=(32, 32, 3),
                    rng: jax.Array | None = None) -> PyTree:
  """Boolean masks (tree mirroring params) keeping the plan's counts by `criterion`."""
  kernels = _kernels(params, plan)
  if criterion == "magnitude":
    saliency = {k: jnp.abs(v) for k, v in kernels.items()}
  elif criterion == "random":
    rng = jax.random.PRNGKey(0) if rng is None else rng
    saliency = {k: jax.random.uniform(jax.random.fold_in(rng, i), v.shape)
                for i, (k, v) in enumerate(sorted(kernels.items()))}
  elif criterion == "snip":
    saliency = snip_saliency(model, params, batch_stats, plan, list(batches))
  elif criterion == "grasp":
    saliency = grasp_saliency(model, params, batch_stats, plan, list(batches))
  elif criterion == "synflow":
    saliency = synflow_saliency(model, params, batch_stats, plan, input_shape)
  else:
    raise ValueError(f"unknown criterion {criterion!r}; choose one of {CRITERIA}")
  keep = {l.path + ("kernel",): plan.keep_count(l) for l in plan.masked_layers}
  return traverse_util.unflatten_dict(
      {k: masking.topk_mask(saliency[k], keep[k]) for k in saliency})
