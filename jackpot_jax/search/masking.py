"""Exact top-k and N:M masks, and the straight-through estimator that trains scores
through them."""

from __future__ import annotations

import dataclasses
import functools
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from jackpot_jax.bounded_cache import BoundedCache
from jackpot_jax.models.registry import torch_module_name

PyTree = Any


def _order_keys(values: jax.Array) -> jax.Array:
  """uint32 keys whose unsigned order is `lax.top_k`'s order of the float32 values.

  That order is the IEEE total order of the bit patterns: -0.0 ranks below +0.0 and
  denormals stay distinct (no flush to zero), so every exact method agrees bit for bit.
  """
  bits = lax.bitcast_convert_type(values.reshape(-1).astype(jnp.float32), jnp.uint32)
  negative = (bits >> 31) == 1
  return jnp.where(negative, ~bits, bits | jnp.uint32(0x80000000))


def _keep_from_threshold(keys: jax.Array, threshold: jax.Array, keep_count: int) -> jax.Array:
  """Keeps every key above the k-th largest and, of the keys equal to it, the lowest
  indices until exactly `keep_count` are kept: `lax.top_k`'s tie rule.

  The running count of ties (a cumulative sum, ~30x a plain sum on a CPU) is taken only
  when some tied keys must be dropped; in mid-search scores rarely tie, and all are kept.
  """
  above = keys > threshold
  tied = keys == threshold
  room = keep_count - jnp.sum(above, dtype=jnp.int32)

  def first_ties(tied):
    return tied & (jnp.cumsum(tied, dtype=jnp.int32) <= room)

  kept_ties = lax.cond(jnp.sum(tied, dtype=jnp.int32) > room, first_ties, lambda t: t, tied)
  return above | kept_ties


def _masks_by_top_k(rankings: list, keep_counts: list) -> list:
  """One `lax.top_k` per layer, scattered into a mask (a partial sort of every layer)."""
  masks = []
  for ranking, keep_count in zip(rankings, keep_counts):
    _, kept = lax.top_k(ranking.reshape(-1), keep_count)
    masks.append(jnp.zeros(ranking.size, bool).at[kept].set(True))
  return masks


def _masks_by_sort(rankings: list, keep_counts: list) -> list:
  """The k-th largest key read off a full sort of each layer's keys."""
  masks = []
  for ranking, keep_count in zip(rankings, keep_counts):
    keys = _order_keys(ranking)
    threshold = jnp.sort(keys)[keys.size - keep_count]
    masks.append(_keep_from_threshold(keys, threshold, keep_count))
  return masks


def _masks_by_bisection(rankings: list, keep_counts: list) -> list:
  """The k-th largest key of every layer found bit by bit, most significant first.

  Each of the 32 rounds counts, for all layers at once, the keys at or above a candidate
  threshold: 32 streaming passes of compare-and-sum, no sort and no scatter, and one
  loop for the whole network rather than one per layer.
  """
  return _select_by_bisection([_order_keys(ranking) for ranking in rankings], keep_counts)


def _select_by_bisection(keys: list, keep_counts: list) -> list:
  """`_masks_by_bisection` on order keys (`_order_keys`); a keep count may be a traced
  int32 scalar as well as a Python int, 0 and the key count included."""

  def refine(bit, thresholds):
    one = jnp.left_shift(jnp.uint32(1), (31 - bit).astype(jnp.uint32))
    refined = []
    for layer_keys, keep_count, threshold in zip(keys, keep_counts, thresholds):
      candidate = threshold | one
      enough = jnp.sum(layer_keys >= candidate, dtype=jnp.int32) >= keep_count
      refined.append(jnp.where(enough, candidate, threshold))
    return tuple(refined)

  thresholds = lax.fori_loop(0, 32, refine, tuple(jnp.uint32(0) for _ in keys))
  return [_keep_from_threshold(layer_keys, threshold, keep_count)
          for layer_keys, threshold, keep_count in zip(keys, thresholds, keep_counts)]


# Every exact way to pick each layer's top-k; all return the same masks bit for bit
# (benchmarks/mask_selection.py checks it and times them on ResNet-50's layers).
TOPK_METHODS = {"top_k": _masks_by_top_k, "sort": _masks_by_sort,
                "bisection": _masks_by_bisection}

# The method the search uses on each backend, chosen once from
# benchmarks/mask_selection.py (CPU: bisection ~3x faster than top_k on ResNet-50's
# layers). GPU and TPU use bisection too until that benchmark has run there: it is a
# few streaming reductions, where top_k with a large k becomes a sort.
TOPK_METHOD_BY_PLATFORM = {"cpu": "bisection", "cuda": "bisection", "rocm": "bisection",
                           "tpu": "bisection"}


def topk_masks(rankings: list, keep_counts: list, method: str | None = None) -> list:
  """Boolean masks with exactly `keep_counts[i]` True entries at the largest values of
  `rankings[i]`, ties broken towards the lower flat index (as `lax.top_k` orders them).

  The count is exact and deterministic however many scores tie. Where the k-th and
  (k+1)-th largest tie, the authors' PyTorch re-selection (a sort, then swaps only when as
  many pruned scores lie above the (k+1)-th largest as kept ones at or below it) leaves
  the layer's mask unchanged instead; at the `magnitude` init's first step every kept
  score ties at 1.0, but the pruned ones sit at 0.99, so no tie crosses the boundary and
  both keep the magnitude mask.

  Args:
    rankings: float arrays of any shapes.
    keep_counts: static ints, 0 <= keep_counts[i] <= rankings[i].size.
    method: a key of `TOPK_METHODS`; None picks `TOPK_METHOD_BY_PLATFORM`'s entry for the
      platform the program is compiled for.
  """
  for ranking, keep_count in zip(rankings, keep_counts):
    if not 0 <= keep_count <= ranking.size:
      raise ValueError(f"keep_count {keep_count} is outside [0, {ranking.size}]")
  masks: list = [None] * len(rankings)
  selected = [i for i, (r, k) in enumerate(zip(rankings, keep_counts)) if 0 < k < r.size]
  for i, (ranking, keep_count) in enumerate(zip(rankings, keep_counts)):
    if i not in selected:
      masks[i] = jnp.full(ranking.shape, keep_count == ranking.size)
  if selected:
    args = ([rankings[i] for i in selected], [keep_counts[i] for i in selected])
    if method is not None:
      flat = TOPK_METHODS[method](*args)
    else:
      # One branch per distinct method: JAX traces and lowers every branch it is given
      # (the same partial for two platforms counts once), so one method everywhere is a
      # plain call, not a switch over five copies of it.
      by_method = {name: functools.partial(TOPK_METHODS[name], *args)
                   for name in set(TOPK_METHOD_BY_PLATFORM.values())}
      if len(by_method) == 1:
        flat = next(iter(by_method.values()))()
      else:
        flat = lax.platform_dependent(
            default=by_method[TOPK_METHOD_BY_PLATFORM["cpu"]],
            **{platform: by_method[name] for platform, name in TOPK_METHOD_BY_PLATFORM.items()})
    for i, mask in zip(selected, flat):
      masks[i] = mask.reshape(rankings[i].shape)
  return masks


def topk_masks_traced(rankings: list, keep_counts: Any) -> list:
  """`topk_masks` with keep counts that vary at run time (`keep_counts[i]` an int32 scalar
  in [0, rankings[i].size], e.g. traced from the step number): the same masks bit for bit,
  ties to the lower flat index, by bisection (the one exact method with no static k)."""
  keys = [_order_keys(ranking) for ranking in rankings]
  counts = [jnp.asarray(keep_counts[i], jnp.int32) for i in range(len(rankings))]
  return [mask.reshape(ranking.shape)
          for ranking, mask in zip(rankings, _select_by_bisection(keys, counts))]


def cap_flips(old_masks: list, new_masks: list, rankings: list, cap: jax.Array) -> list:
  """Each layer's new mask with at most `cap` weights swapped in: where more than `cap`
  weights enter, the `cap` highest-ranked of them enter and as many lowest-ranked
  incumbents leave, plus however many more the new mask drops (a keep count that
  shrinks), so the kept count is the new mask's either way. Ties: the lower index enters
  first, and leaves first.

  Args:
    old_masks, new_masks: lists of bool masks, one per layer (top-k masks).
    rankings: the values both were selected by (`ranking_values`), one per layer.
    cap: an int32 scalar >= 0, traced or static.
  """
  olds = [mask.reshape(-1) for mask in old_masks]
  news = [mask.reshape(-1) for mask in new_masks]
  incoming = [new & ~old for old, new in zip(olds, news)]
  outgoing = [old & ~new for old, new in zip(olds, news)]
  entering = [jnp.sum(mask, dtype=jnp.int32) for mask in incoming]

  def limited(_):
    # One bisection over every layer for the entering weights, one for the leaving:
    # ineligible keys rank as the lowest key, 0, which only a NaN with every bit set
    # shares. Where a layer is within the cap, all of its newcomers enter and all of its
    # leavers leave: its new mask, whole.
    keys = [_order_keys(ranking) for ranking in rankings]
    admitted = [jnp.minimum(count, cap) for count in entering]
    leaving = [count + jnp.sum(out, dtype=jnp.int32) - total
               for count, out, total in zip(admitted, outgoing, entering)]
    added = _select_by_bisection(
        [jnp.where(inc, k, jnp.uint32(0)) for inc, k in zip(incoming, keys)], admitted)
    # The worst incumbents are the largest of the inverted keys.
    dropped = _select_by_bisection(
        [jnp.where(out, ~k, jnp.uint32(0)) for out, k in zip(outgoing, keys)], leaving)
    return [(old & ~(drop & out)) | (add & inc)
            for old, drop, out, add, inc in zip(olds, dropped, outgoing, added, incoming)]

  over = functools.reduce(jnp.logical_or, [count > cap for count in entering])
  masks = lax.cond(over, limited, lambda _: news, None)
  return [mask.reshape(new.shape) for mask, new in zip(masks, new_masks)]


def topk_mask(scores: jax.Array, keep_count: int, method: str | None = None) -> jax.Array:
  """`topk_masks` for one array: a bool array of `scores.shape`."""
  return topk_masks([scores], [keep_count], method)[0]


UNSTRUCTURED = "unstructured"


@dataclasses.dataclass(frozen=True)
class NMPattern:
  """Keep the `n` largest of every `m` consecutive input channels, at every kernel position
  and output channel: NVIDIA ASP's grouping (`create_mask` permutes a conv weight
  `[K, C, R, S]` to `[R, S, K, C]` and groups along C), which cuDNN/TensorRT sparse
  convolutions and `to_sparse_semi_structured` (a linear `[out, in]`, along `in`) consume.

  A Flax kernel keeps its input channels on axis -2 (`(kh, kw, in, out)`, `(k, in, out)`,
  `(in, out)`), so groups run along that axis whatever the kernel's rank."""

  n: int
  m: int

  def __str__(self) -> str:
    return f"{self.n}:{self.m}"

  @property
  def density(self) -> float:
    return self.n / self.m

  def fits(self, shape: tuple[int, ...]) -> bool:
    """Whether a Flax kernel of `shape` splits into whole groups along its input channels
    (a conv over 1 or 3 input channels does not fit 2:4, whatever its window)."""
    return len(shape) >= 2 and shape[-2] % self.m == 0


def parse_pattern(text: str) -> NMPattern | None:
  """`search.pattern`: "unstructured" (None) or "N:M" with 0 < N < M."""
  if text == UNSTRUCTURED:
    return None
  parts = str(text).split(":")
  if len(parts) == 2 and all(p.strip().isdigit() for p in parts):
    n, m = (int(p) for p in parts)
    if 0 < n < m:
      return NMPattern(n, m)
  raise ValueError(f"search.pattern must be {UNSTRUCTURED!r} or N:M with 0 < N < M "
                   f"(e.g. 2:4), got {text!r}")


def channel_groups(kernel: jax.Array, m: int) -> jax.Array:
  """(*window, out, in // m, m): the runs of `m` consecutive input channels of a Flax
  kernel at every kernel position and output channel (`NMPattern`'s groups)."""
  moved = jnp.swapaxes(kernel, -1, -2)  # (*window, out, in)
  return moved.reshape(moved.shape[:-1] + (moved.shape[-1] // m, m))


def _ungroup(groups: jax.Array, kernel_shape: tuple[int, ...]) -> jax.Array:
  """The inverse of `channel_groups`."""
  moved_shape = kernel_shape[:-2] + (kernel_shape[-1], kernel_shape[-2])
  return jnp.swapaxes(groups.reshape(moved_shape), -1, -2)


def nm_mask(scores: jax.Array, pattern: NMPattern) -> jax.Array:
  """Boolean mask keeping exactly the `pattern.n` largest scores of every group.

  `lax.top_k` breaks ties towards the lower input channel inside a group, so every group
  keeps exactly n even when all its scores tie (the first step of magnitude initialisation).
  """
  if not pattern.fits(scores.shape):
    raise ValueError(f"a kernel of shape {scores.shape} has no whole groups of {pattern.m} "
                     "along its input channels")
  groups = channel_groups(scores, pattern.m)
  _, kept = lax.top_k(groups, pattern.n)
  grouped = jnp.any(kept[..., None] == jnp.arange(pattern.m), axis=-2)
  return _ungroup(grouped, scores.shape)


def select_mask(ranking: jax.Array, rule: int | NMPattern) -> jax.Array:
  """The mask a layer's rule keeps: a static keep count (top-k) or an N:M pattern."""
  if isinstance(rule, NMPattern):
    return nm_mask(ranking, rule)
  return topk_mask(ranking, rule)


def nm_group_counts(mask: jax.Array, m: int) -> jax.Array:
  """Kept entries of every group of `m` input channels, for checking a pattern."""
  return jnp.sum(channel_groups(jnp.asarray(mask), m), axis=-1)


def ranking_values(scores: PyTree, by_magnitude: bool) -> PyTree:
  """What the top-k ranks: the scores, or their absolute values (edge-popup's |S|)."""
  return jax.tree.map(jnp.abs, scores) if by_magnitude else scores


def compute_masks(scores: PyTree, keep_counts: PyTree, by_magnitude: bool = False,
                  method: str | None = None) -> PyTree:
  """Every layer's mask under its rule: top-k layers all at once (`topk_masks`), N:M
  layers group by group (`nm_mask`).

  Args:
    keep_counts: mirrors `scores`; each leaf a static keep count (Python int, top-k of the
      layer) or an `NMPattern` (top-n of every group of m).
    by_magnitude: rank |score| (edge-popup) instead of the signed score (the reference).
    method: the exact top-k method (`TOPK_METHODS`); None: the platform's choice.
  """
  rankings, treedef = jax.tree.flatten(ranking_values(scores, by_magnitude))
  rules = treedef.flatten_up_to(keep_counts)
  masks = [nm_mask(r, rule) if isinstance(rule, NMPattern) else None
           for r, rule in zip(rankings, rules)]
  topk = [i for i, mask in enumerate(masks) if mask is None]
  for i, mask in zip(topk, topk_masks([rankings[i] for i in topk],
                                      [rules[i] for i in topk], method)):
    masks[i] = mask
  return jax.tree.unflatten(treedef, masks)


def compiled_masks(scores: PyTree, keep_counts: PyTree, by_magnitude: bool = False) -> PyTree:
  """`compute_masks` as one compiled program, for callers outside a jitted step (the first
  search state, the magnitude baseline): run op by op, every layer shape compiles its own
  small programs, ~3x slower on a ResNet-20 in a fresh process (10.5 s against 3.1 s here).
  The program is kept for the process's later calls with the same keep counts.
  """
  rules, treedef = jax.tree.flatten(keep_counts)
  key = (treedef, tuple(rules), by_magnitude)
  program = _masks_programs.get(key, lambda: jax.jit(functools.partial(
      compute_masks, keep_counts=jax.tree.unflatten(treedef, rules), by_magnitude=by_magnitude)))
  return program(scores)


# The masks programs of `compiled_masks`, by keep counts (their tree and leaves).
_masks_programs = BoundedCache(16)


@jax.custom_vjp
def straight_through(scores: jax.Array, mask: jax.Array) -> jax.Array:
  """Returns `mask` as a float array whose gradient flows to `scores` unchanged.

  The forward value is exactly the binary mask (no `s + stop_gradient(m - s)` rounding),
  so a masked layer computes with W * M bit for bit; the backward pass treats the mask
  as the identity of the score: dL/dS = dL/dM.
  """
  return mask.astype(scores.dtype)


def _straight_through_fwd(scores, mask):
  return mask.astype(scores.dtype), None


def _straight_through_bwd(_, cotangent):
  return cotangent, None


straight_through.defvjp(_straight_through_fwd, _straight_through_bwd)


def count_flips(old_masks: PyTree, new_masks: PyTree) -> jax.Array:
  """Number of mask entries that changed, summed over all layers."""
  flips = jax.tree.map(lambda a, b: jnp.sum(a != b, dtype=jnp.int32), old_masks, new_masks)
  return sum(jax.tree.leaves(flips), jnp.int32(0))


def flips_per_layer(old_masks: PyTree, new_masks: PyTree) -> dict[str, jax.Array]:
  """{layer name: mask entries that changed in it}; a layer is named by its kernel's
  module path as PyTorch names it ("layer1.0.conv1"), as the plan names layers. The
  values sum to `count_flips`."""
  flips = jax.tree.map(lambda a, b: jnp.sum(a != b, dtype=jnp.int32), old_masks, new_masks)
  return {torch_module_name(tuple(getattr(k, "key", k) for k in path[:-1])): value
          for path, value in jax.tree_util.tree_flatten_with_path(flips)[0]}
