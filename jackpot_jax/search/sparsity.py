"""Sparsity plans: how many weights each prunable layer keeps.

A plan is computed once on the host from the pre-trained weights, before anything is
jitted; the keep counts it produces are static Python ints, so the search step's top-k
has static shapes and needs no host round-trip. How a target sparsity spreads over the
layers is one function registered by name with `register_plan`; search.sparsity_plan
picks it.
"""

from __future__ import annotations

import dataclasses
import fnmatch
import math
from typing import Any, Callable, Mapping, Sequence

import jax
import numpy as np
from flax import traverse_util

from jackpot_jax.models.wrapper import Maskable, is_maskable
from jackpot_jax.search.masking import NMPattern, nm_group_counts, parse_pattern
from jackpot_jax.models.registry import ModelSpec, torch_module_name
from jackpot_jax.registry import Registry

LAYER_POLICIES = ("dense", "plan")


@dataclasses.dataclass(frozen=True)
class PrunableLayer:
  """A layer whose kernel a mask may cover."""

  name: str  # PyTorch-style module name, e.g. "layer1.0.conv1"
  path: tuple[str, ...]  # Flax module path, e.g. ("layer1_0", "conv1")
  shape: tuple[int, ...]
  kind: str  # "conv" (4-D kernel), "dense" (2-D kernel) or "other" (e.g. DenseGeneral)

  @property
  def size(self) -> int:
    return math.prod(self.shape)


def _kind(ndim: int) -> str:
  return {4: "conv", 2: "dense"}.get(ndim, "other")


def prunable_layers(params: Mapping[str, Any], maskable: Maskable = is_maskable
                    ) -> list[PrunableLayer]:
  """Every module that owns a maskable `kernel`, in parameter-tree order."""
  layers = []
  for path, leaf in traverse_util.flatten_dict(params).items():
    if path[-1] != "kernel" or not maskable(tuple(path), tuple(np.shape(leaf))):
      continue
    module_path = tuple(path[:-1])
    layers.append(PrunableLayer(name=torch_module_name(module_path), path=module_path,
                                shape=tuple(np.shape(leaf)), kind=_kind(np.ndim(leaf))))
  return layers


@dataclasses.dataclass(frozen=True)
class SparsityPlan:
  """Per-layer prune counts for every prunable layer (0 = the layer stays dense)."""

  layers: tuple[PrunableLayer, ...]
  prune_counts: Mapping[str, int]
  method: str
  target: float
  # With an N:M pattern: the pattern every masked layer keeps, and the layers the plan's
  # policies include whose input-channel count is no multiple of M (they stay dense).
  pattern: NMPattern | None = None
  unfit_layers: tuple[str, ...] = ()

  def keep_count(self, layer: PrunableLayer) -> int:
    return layer.size - self.prune_counts[layer.name]

  def layer_sparsity(self) -> dict[str, float]:
    return {l.name: self.prune_counts[l.name] / l.size for l in self.layers}

  @property
  def masked_layers(self) -> tuple[PrunableLayer, ...]:
    """Layers the search masks: those with at least one weight to prune."""
    return tuple(l for l in self.layers if self.prune_counts[l.name] > 0)

  def keep_counts(self) -> dict:
    """Nested dict mirroring the params tree, `kernel` leaves holding each masked layer's
    static rule: its keep count, or the plan's N:M pattern (`masking.select_mask`)."""
    flat = {l.path + ("kernel",): self.pattern or self.keep_count(l) for l in self.masked_layers}
    return traverse_util.unflatten_dict(flat)


def _included(layers, spec: ModelSpec | None, classifier: str, first_layer: str,
              hidden_dense: str):
  """The layers a plan pools: every kernel but those a policy keeps dense.

  Hidden dense layers are 2-D kernels other than the spec's classifier (torchvision VGG's
  classifier.0 and classifier.3); without a spec no layer is told apart and all join.
  """
  for policy, what in ((classifier, "classifier"), (first_layer, "first_layer"),
                       (hidden_dense, "hidden_dense")):
    if policy not in LAYER_POLICIES:
      raise ValueError(f"search.{what} must be one of {LAYER_POLICIES}, got {policy!r}")
  if spec is None:
    return list(layers)
  excluded = set()
  if classifier == "dense":
    excluded.add(spec.classifier)
  if first_layer == "dense":
    excluded.add(spec.first_layer)
  if hidden_dense == "dense":
    excluded.update(l.name for l in layers if l.kind == "dense" and l.name != spec.classifier)
  return [l for l in layers if l.name not in excluded]


def _pooled(params, spec, classifier, first_layer, hidden_dense):
  """(params on the host, every prunable layer, the layers the policies let a plan mask)."""
  params = jax.device_get(params)
  layers = prunable_layers(params, spec.maskable if spec else is_maskable)
  if not layers:
    raise ValueError("the model has no prunable conv or dense layer")
  return params, layers, _included(layers, spec, classifier, first_layer, hidden_dense)


# A plan: `plan(params, layers, sparsity) -> {layer name: prune count}` for each of `layers`
# (the layers the policies pool, `PrunableLayer`s), given the host's params tree and the
# target fraction of their pooled weights to prune.
PlanFunction = Callable[[Mapping[str, Any], Sequence[PrunableLayer], float], dict[str, int]]
PLAN_REGISTRY: Registry[PlanFunction] = Registry("search.sparsity_plan")


def register_plan(name: str) -> Callable[[PlanFunction], PlanFunction]:
  """Decorator registering `plan(params, layers, sparsity) -> {layer name: prune count}`
  as search.sparsity_plan=`name`; returns `plan` unchanged. Overrides, the empty-layer
  and nothing-pruned checks apply to every plan (`build_sparsity_plan`)."""
  def register(plan: PlanFunction) -> PlanFunction:
    return PLAN_REGISTRY.register(name, plan)
  return register


def plan_names() -> tuple[str, ...]:
  """Every registered search.sparsity_plan, in registration order."""
  return PLAN_REGISTRY.names()


def __getattr__(name: str) -> Any:
  # PLANS was a constant; derived on each read, it includes later registrations.
  if name == "PLANS":
    return plan_names()
  raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@register_plan("l1")
def _l1_prune_counts(params, layers, sparsity) -> dict[str, int]:
  """Global magnitude pruning with exact counts: `int(sparsity * total)` weights in all.

  The pruned weights are the first `cut` of a stable sort of the pooled magnitudes,
  concatenated in layer order, each kernel flattened as stored (Flax's HWIO / (in, out)):
  among equal magnitudes the lower position goes first, so ties at the threshold fall to
  the earlier layers, and within a layer to the lower flat index. Restricted to one layer
  that global order is the layer's own stable argsort, so the weights counted here are
  exactly those `scores._magnitude` prunes. Computed with a partition (linear time): all
  magnitudes below the cut's value, then the ties at it in position order.
  """
  flat = traverse_util.flatten_dict(params)
  magnitudes = [np.abs(np.asarray(flat[l.path + ("kernel",)], np.float32)).ravel() for l in layers]
  total = sum(m.size for m in magnitudes)
  cut = int(sparsity * total)
  if cut == 0:
    return {l.name: 0 for l in layers}
  threshold = np.partition(np.concatenate(magnitudes), cut - 1)[cut - 1]
  counts, left = {}, cut
  for l, m in zip(layers, magnitudes):
    # NaN sorts last, as in np.argsort: below a NaN threshold is every number.
    below = int(np.sum(~np.isnan(m))) if np.isnan(threshold) else int(np.sum(m < threshold))
    counts[l.name] = below
    left -= below
  for l, m in zip(layers, magnitudes):
    ties = int(np.sum(np.isnan(m))) if np.isnan(threshold) else int(np.sum(m == threshold))
    taken = min(ties, left)
    counts[l.name] += taken
    left -= taken
  return counts


@register_plan("uniform")
def _uniform_prune_counts(params, layers, sparsity) -> dict[str, int]:
  """The same fraction of every layer."""
  del params
  return {l.name: int(sparsity * l.size) for l in layers}


def _erk_densities(layers, sparsity, power_scale: float = 1.0) -> dict[str, float]:
  """Erdős–Rényi-Kernel densities (Evci et al. 2020), as RigL and JaxPruner compute them.

  Density is proportional to sum(shape) / prod(shape); layers that would exceed density 1
  are made dense and the budget is re-spread over the rest.
  """
  dense: set[str] = set()
  while True:
    budget, divisor, raw = 0.0, 0.0, {}
    for l in layers:
      if l.name in dense:
        budget -= l.size * sparsity
      else:
        budget += l.size * (1.0 - sparsity)
        raw[l.name] = (sum(l.shape) / l.size) ** power_scale
        divisor += raw[l.name] * l.size
    if not raw:
      return {l.name: 1.0 for l in layers}
    epsilon = budget / divisor
    largest = max(raw.values())
    if largest * epsilon <= 1.0:
      break
    dense.update(name for name, value in raw.items() if value == largest)
  return {l.name: 1.0 if l.name in dense else epsilon * raw[l.name] for l in layers}


@register_plan("erk")
def _erk_prune_counts(params, layers, sparsity) -> dict[str, int]:
  del params
  densities = _erk_densities(layers, sparsity)
  return {l.name: int((1.0 - densities[l.name]) * l.size) for l in layers}


def build_pattern_plan(params: Mapping[str, Any], pattern: NMPattern, *,
                       spec: ModelSpec | None = None, classifier: str = "dense",
                       first_layer: str = "plan", hidden_dense: str = "dense") -> SparsityPlan:
  """The plan an N:M pattern implies: every layer the policies include keeps n of every m
  consecutive input channels at each kernel position and output (`masking.NMPattern`); one
  whose input-channel count is no multiple of m (a conv over an RGB or grey image) stays
  dense and is listed in `unfit_layers`.

  Raises ValueError with one line when no included layer fits the pattern.
  """
  params, layers, included = _pooled(params, spec, classifier, first_layer, hidden_dense)
  fit = [l for l in included if l.kind != "other" and pattern.fits(l.shape)]
  if not fit:
    raise ValueError(f"search.pattern={pattern} fits no layer the plan masks: no layer's "
                     f"input-channel count is a multiple of {pattern.m}; choose a smaller M")
  counts = {l.name: 0 for l in layers}
  counts.update({l.name: l.size - l.size // pattern.m * pattern.n for l in fit})
  return SparsityPlan(layers=tuple(layers), prune_counts=counts, method=f"pattern {pattern}",
                      target=1.0 - pattern.density, pattern=pattern,
                      unfit_layers=tuple(l.name for l in included if l not in fit))


def build_sparsity_plan(params: Mapping[str, Any], *, sparsity: float, method: str = "l1",
                        spec: ModelSpec | None = None, classifier: str = "dense",
                        first_layer: str = "plan", hidden_dense: str = "dense",
                        overrides: Mapping[str, float] | None = None) -> SparsityPlan:
  """Computes per-layer prune counts.

  Args:
    params: the frozen pre-trained parameter tree.
    sparsity: target fraction of pruned weights over the layers the plan covers
      (the conv layers by default, as the reference's "90% sparsity").
    method: a registered plan (`plan_names`): "l1" (global magnitude threshold, the
      reference default), "uniform" or "erk" unless more are registered.
    spec: the model's spec, naming its classifier and first layer.
    classifier: "dense" keeps the classifier unpruned (reference); "plan" includes it.
    first_layer: "plan" (reference) or "dense".
    hidden_dense: "dense" keeps 2-D kernels other than the classifier (torchvision VGG's
      hidden Linear layers) unpruned, as the reference's plans pool convolutions only;
      "plan" includes them.
    overrides: {fnmatch pattern over layer names: sparsity}, applied last; 0 keeps dense.

  Returns:
    A SparsityPlan. Raises ValueError with a one-line message when the target is outside
    [0, 1), a policy is unknown, an override pattern matches no layer, a layer would keep
    no weight or the plan prunes nothing.
  """
  if not 0.0 <= float(sparsity) < 1.0:
    raise ValueError(f"search.sparsity must be in [0, 1), got {sparsity}")
  plan_prune_counts = PLAN_REGISTRY.get(method)
  params, layers, included = _pooled(params, spec, classifier, first_layer, hidden_dense)
  counts = {l.name: 0 for l in layers}
  counts.update(plan_prune_counts(params, included, sparsity))
  for pattern, layer_sparsity in (overrides or {}).items():
    if not 0.0 <= float(layer_sparsity) < 1.0:
      raise ValueError(f"search.layer_overrides[{pattern!r}] must be in [0, 1), got {layer_sparsity}")
    matched = [l for l in layers if fnmatch.fnmatchcase(l.name, pattern)]
    if not matched:
      raise ValueError(f"search.layer_overrides pattern {pattern!r} matches no layer; "
                       f"layers are named like {layers[0].name!r}")
    counts.update({l.name: int(float(layer_sparsity) * l.size) for l in matched})
  for l in layers:
    if counts[l.name] >= l.size:
      raise ValueError(f"the sparsity plan leaves layer {l.name} with no kept weight; "
                       "lower search.sparsity or override that layer")
  if not any(counts.values()):
    raise ValueError(f"the {method} plan at search.sparsity={sparsity} prunes no weight of any "
                     "layer, so there is nothing to search; raise search.sparsity or set a "
                     "search.layer_overrides entry above 0")
  return SparsityPlan(layers=tuple(layers), prune_counts=counts, method=method,
                      target=float(sparsity))


def plan_for(params: Mapping[str, Any], search: Any, spec: ModelSpec | None) -> SparsityPlan:
  """The plan a config's `search` section asks for: its N:M pattern's, or its sparsity plan."""
  policies = {"spec": spec, "classifier": search.classifier, "first_layer": search.first_layer,
              "hidden_dense": search.hidden_dense}
  pattern = parse_pattern(search.pattern)
  if pattern is not None:
    return build_pattern_plan(params, pattern, **policies)
  return build_sparsity_plan(params, sparsity=search.sparsity, method=search.sparsity_plan,
                             overrides=dict(search.layer_overrides), **policies)


def count_sparsity(params: Mapping[str, Any], masks: Mapping[str, Any] | None,
                   maskable: Maskable = is_maskable) -> dict:
  """Sparsity counted from the actual masks, under each convention, labelled.

  Args:
    params: the frozen parameter tree.
    masks: a tree mirroring params' masked kernels, or None for the dense network.
    maskable: the model's predicate (`ModelSpec.maskable`): the kernels it selects are the
      layers counted, so a model that masks fewer or other kernels is counted as it is.

  Returns:
    {"conv": fraction of conv-kernel weights masked out (the reference's "sparsity"),
     "linear": over the 2-D (Dense) kernels of the layers the masks cover, a
       transformer's "all masked linear layers",
     "prunable": over conv + dense kernels (the reference's compression-rate convention),
     "all_weights": over every parameter, BN affine and biases included,
     "per_layer": {layer name: fraction masked out},
     "conventions": one sentence per key saying what was counted}
  """
  params = jax.device_get(params)
  flat_masks = traverse_util.flatten_dict(jax.device_get(masks or {}))
  per_layer, totals = {}, {"conv": [0, 0], "linear": [0, 0], "prunable": [0, 0]}
  for layer in prunable_layers(params, maskable):
    mask = flat_masks.get(layer.path + ("kernel",))
    pruned = 0 if mask is None else int(layer.size - np.count_nonzero(mask))
    per_layer[layer.name] = pruned / layer.size
    kinds = {"conv": ("conv",), "dense": ("linear",) if mask is not None else ()}
    for key in ("prunable",) + kinds.get(layer.kind, ()):
      totals[key][0] += pruned
      totals[key][1] += layer.size
  all_params = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
  pruned_total = totals["prunable"][0]
  return {
      "conv": totals["conv"][0] / max(totals["conv"][1], 1),
      "linear": totals["linear"][0] / max(totals["linear"][1], 1),
      "prunable": pruned_total / max(totals["prunable"][1], 1),
      "all_weights": pruned_total / max(all_params, 1),
      "per_layer": per_layer,
      "conventions": {
          "conv": "masked-out fraction of convolution kernels (the paper's sparsity)",
          "linear": "masked-out fraction of the masked linear (Dense) layers' kernels",
          "prunable": "masked-out fraction of conv + dense kernels, classifier included",
          "all_weights": "masked-out fraction of every parameter, BN and biases included",
      },
  }


def check_pattern(plan: SparsityPlan, masks: Mapping[str, Any]) -> dict:
  """The N:M pattern counted from the actual masks, group by group (`masking.NMPattern`'s
  groups: consecutive input channels at every kernel position and output channel).

  Returns {"pattern": "unstructured" or "N:M", "nm_valid": None (unstructured) or whether
  every group of every masked layer keeps at most n, "groups": groups checked,
  "unfit_layers": layers left dense because their input-channel count is no multiple of m}.
  """
  if plan.pattern is None:
    return {"pattern": "unstructured", "nm_valid": None, "groups": 0, "unfit_layers": []}
  flat = traverse_util.flatten_dict(jax.device_get(masks))
  valid, groups = True, 0
  for layer in plan.masked_layers:
    counts = np.asarray(nm_group_counts(flat[layer.path + ("kernel",)], plan.pattern.m))
    valid = valid and bool(np.all(counts <= plan.pattern.n))
    groups += counts.size
  return {"pattern": str(plan.pattern), "nm_valid": valid, "groups": groups,
          "unfit_layers": list(plan.unfit_layers)}
