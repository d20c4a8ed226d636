"""Masks that common pruning criteria choose at the plan's keep counts.

The paper compares the searched jackpot with what magnitude, random, SNIP (first-order
Taylor), GraSP and SynFlow would keep on the same pre-trained weights and keep counts;
N:M runs add Wanda (Sun et al. 2023). Each criterion gives a saliency per weight; the mask
keeps the `k` most salient (or the n most salient of every group of m), with the same
exact selection as the search, so comparisons are like with like. Each criterion is one
saliency function registered by name with `register_criterion`.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable, Iterable, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jax import lax

from jackpot_jax import dispatch
from jackpot_jax.models import layers
from jackpot_jax.search import masking, steps
from jackpot_jax.registry import Registry
from jackpot_jax.search.sparsity import SparsityPlan

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


def _input_square_sums(module: nn.Module, inputs: jax.Array) -> jax.Array:
  """Sum of squares of each input column a masked layer's weights multiply, over the batch
  and every output position, laid out like the layer's Flax kernel (broadcast over out).

  A convolution's columns are its im2col patches, (in, kh, kw) as PyTorch flattens them;
  with groups, output channel o sees only its group's input channels.
  """
  squares = jnp.square(inputs.astype(jnp.float32))
  if isinstance(module, (layers.Dense, nn.Dense)) or _last_axis_dense_general(module):
    features = getattr(module, "features", ())
    extra = len(features) if isinstance(features, (tuple, list)) else 1
    return jnp.sum(squares.reshape(-1, squares.shape[-1]), axis=0).reshape((-1,) + (1,) * extra)
  if not isinstance(module, layers.Conv):
    raise ValueError(f"the wanda criterion reads the inputs of Dense, DenseGeneral (axis=-1) "
                     f"and jackpot_jax Conv layers; {'/'.join(module.path)} is a "
                     f"{type(module).__name__}: keep it dense or use another criterion")
  kh, kw = module.kernel_size
  patches = lax.conv_general_dilated_patches(
      squares, (kh, kw), tuple(module.strides), layers.explicit_padding(module.padding),
      dimension_numbers=("NHWC", "HWIO", "NHWC"))
  columns = jnp.sum(patches, axis=(0, 1, 2)).reshape(module.groups, -1, kh, kw)
  per_group = jnp.transpose(columns, (2, 3, 1, 0))  # (kh, kw, in // groups, groups)
  return jnp.repeat(per_group, module.features // module.groups, axis=-1)


def _last_axis_dense_general(module: nn.Module) -> bool:
  return (isinstance(module, nn.DenseGeneral) and module.axis in (-1, (-1,))
          and not module.batch_dims)


def wanda_saliency(model, params, batch_stats, plan, batches) -> dict:
  """|w| * ||x_j||_2 (Wanda, Sun et al. 2023): each weight times the norm of the input
  column it multiplies, over the calibration batches, through the dense network. Ranked
  within each output row's groups of m, as Wanda's N:M masks are, it is Wanda N:M."""
  kernels = _kernels(params, plan)
  paths = {key[:-1] for key in kernels}

  def square_sums(params, batch_stats, batch):
    sums = {}

    def record(next_fun, args, kwargs, context):
      module = context.module
      if context.method_name == "__call__" and tuple(module.path) in paths:
        sums[tuple(module.path) + ("kernel",)] = _input_square_sums(module, args[0])
      return next_fun(*args, **kwargs)

    with nn.intercept_methods(record):
      model.apply({"params": params, "batch_stats": batch_stats}, batch["image"], train=False)
    return sums

  norms = dispatch.mean_over_batches(square_sums, batches, params, batch_stats)
  return {k: jnp.abs(kernels[k]) * jnp.sqrt(norms[k]) for k in kernels}


@dataclasses.dataclass(frozen=True)
class CriterionInputs:
  """What a criterion may read: the dense network, the plan whose masked layers it scores,
  calibration batches, the input shape (one example's, for data-free criteria) and a PRNG
  key (None: the criterion's fixed default)."""

  model: nn.Module
  params: PyTree
  batch_stats: PyTree
  plan: SparsityPlan
  batches: Iterable[dict]
  input_shape: Sequence[int]
  rng: jax.Array | None

  def kernels(self) -> dict:
    """{flattened kernel path: kernel} of the plan's masked layers."""
    return _kernels(self.params, self.plan)


# A criterion: `saliency(inputs: CriterionInputs) -> {flattened kernel path: saliency}`, one
# array of the kernel's shape per masked layer (`CriterionInputs.kernels`' keys); the masks
# keep the most salient weights.
Criterion = Callable[[CriterionInputs], dict]
CRITERION_REGISTRY: Registry[Criterion] = Registry("criterion")


def register_criterion(name: str) -> Callable[[Criterion], Criterion]:
  """Decorator registering `saliency(inputs: CriterionInputs) -> {kernel path: saliency}`
  as the criterion `name`; returns `saliency` unchanged."""
  def register(saliency: Criterion) -> Criterion:
    return CRITERION_REGISTRY.register(name, saliency)
  return register


def criterion_names() -> tuple[str, ...]:
  """Every registered criterion, in registration order."""
  return CRITERION_REGISTRY.names()


def __getattr__(name: str) -> Any:
  # CRITERIA was a constant; derived on each read, it includes later registrations.
  if name == "CRITERIA":
    return criterion_names()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register_criterion("magnitude")
def _magnitude(inputs: CriterionInputs) -> dict:
  return {k: jnp.abs(v) for k, v in inputs.kernels().items()}


@register_criterion("random")
def _random(inputs: CriterionInputs) -> dict:
  rng = jax.random.PRNGKey(0) if inputs.rng is None else inputs.rng
  return {k: jax.random.uniform(jax.random.fold_in(rng, i), v.shape)
          for i, (k, v) in enumerate(sorted(inputs.kernels().items()))}


@register_criterion("snip")
def _snip(inputs: CriterionInputs) -> dict:
  return snip_saliency(inputs.model, inputs.params, inputs.batch_stats, inputs.plan,
                       list(inputs.batches))


@register_criterion("grasp")
def _grasp(inputs: CriterionInputs) -> dict:
  return grasp_saliency(inputs.model, inputs.params, inputs.batch_stats, inputs.plan,
                        list(inputs.batches))


@register_criterion("synflow")
def _synflow(inputs: CriterionInputs) -> dict:
  return synflow_saliency(inputs.model, inputs.params, inputs.batch_stats, inputs.plan,
                          inputs.input_shape)


@register_criterion("wanda")
def _wanda(inputs: CriterionInputs) -> dict:
  return wanda_saliency(inputs.model, inputs.params, inputs.batch_stats, inputs.plan,
                        inputs.batches)


def criterion_masks(criterion: str, *, model, params, batch_stats, plan: SparsityPlan,
                    batches: Iterable[dict] = (), input_shape=(32, 32, 3),
                    rng: jax.Array | None = None) -> PyTree:
  """Boolean masks (tree mirroring params) keeping the plan's counts by `criterion`, a
  registered criterion (`criterion_names`)."""
  saliency_of = CRITERION_REGISTRY.get(criterion)
  saliency = saliency_of(CriterionInputs(model=model, params=params, batch_stats=batch_stats,
                                         plan=plan, batches=batches, input_shape=input_shape,
                                         rng=rng))
  rules = traverse_util.flatten_dict(plan.keep_counts())
  # One compiled program for every layer (kept for the next criterion with these counts):
  # op by op, each layer's selection lowered its own dozen small programs, per criterion.
  return traverse_util.unflatten_dict(
      masking.compiled_masks(dict(saliency), {k: rules[k] for k in saliency}))
