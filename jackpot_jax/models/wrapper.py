"""Masking as a wrapper: any unmodified `flax.linen` module runs with W * M.

`masked(module)` returns a module with the same fields and the same variable tree whose
`apply` also reads a `masks` collection mirroring params: every kernel with an entry there
is multiplied by its mask before the wrapped module sees its parameters. A model without
the collection (or a kernel without an entry) runs dense, so a freshly converted model
evaluates before any search and layers the sparsity plan keeps dense carry no mask.

The multiplication happens in `nn.map_variables`, outside the wrapped code, so one path
masks the hand-written CNNs, the ViTs and any model a user brings (Conv, Dense,
DenseGeneral, Einsum): which kernels may be masked is a predicate over (path, shape).
Gradients reach the masks through the product, which is all the straight-through
estimator needs (dL/dM = dL/d(W*M) * W).
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable, Mapping

import flax.linen as nn
from flax import traverse_util

MASKS = "masks"

Maskable = Callable[[tuple[str, ...], tuple[int, ...]], bool]


def is_maskable(path: tuple[str, ...], shape: tuple[int, ...]) -> bool:
  """The default selection: every kernel, i.e. a param named `kernel` of 2 or more axes.

  Conv, Dense, DenseGeneral and Einsum name their weights `kernel`; embeddings
  (`embedding`), norm scales and biases are not kernels, so they are never masked.
  """
  return path[-1] == "kernel" and len(shape) >= 2


def _masked_params(variables: Mapping[str, Any], maskable: Maskable) -> dict:
  """`variables` with every masked kernel replaced by kernel * mask."""
  masks = variables.get(MASKS)
  if not masks:
    return dict(variables)
  flat_params = traverse_util.flatten_dict(variables["params"])
  flat_masks = traverse_util.flatten_dict(masks)
  for path, mask in flat_masks.items():
    kernel = flat_params.get(path)
    if kernel is None or not maskable(path, tuple(kernel.shape)):
      raise ValueError(f"masks/{'/'.join(path)} masks no maskable kernel of this model; "
                       "masks must mirror the params tree's kernels")
    flat_params[path] = kernel * mask.astype(kernel.dtype)
  return {**variables, "params": traverse_util.unflatten_dict(flat_params)}


def _init_fields(module: nn.Module) -> dict:
  return {f.name: getattr(module, f.name) for f in dataclasses.fields(module)
          if f.init and f.name not in ("parent", "name")}


@functools.lru_cache(maxsize=None)
def _masked_class(base: type, maskable: Maskable) -> type:
  """One wrapped class per (module class, predicate), so equal models compare equal."""
  mapped = nn.map_variables(base, ("params", MASKS),
                            trans_in_fn=functools.partial(_masked_params, maskable=maskable))

  def init_with_output(self, *args, **kwargs):
    # Initialisation is the unwrapped module's: the variable tree is the same, and there
    # are no masks to apply yet.
    return base(**_init_fields(self), parent=None).init_with_output(*args, **kwargs)

  return type(f"Masked{base.__name__}", (mapped,),
              {"init_with_output": init_with_output, "__module__": base.__module__})


def masked(module: nn.Module, maskable: Maskable = is_maskable) -> nn.Module:
  """`module`, unmodified, whose `apply` also takes a `masks` collection.

  Args:
    module: an unbound `flax.linen` module (any class, never seen by this library).
    maskable: `maskable(params_path, shape)` says which params may carry a mask; a mask
      for any other leaf is an error.

  Returns:
    A module of the same fields and variable tree; `apply({"params", "masks", ...}, ...)`
    runs `module` with every masked kernel multiplied by its mask.
  """
  return _masked_class(type(module), maskable)(**_init_fields(module))

