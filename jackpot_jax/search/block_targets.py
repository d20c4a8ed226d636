"""Block-wise targets from the frozen dense network: each block's output as a feature target,
and each block's dense input for a local stage that trains every block on its own.

Which modules are blocks is the model's hook: `ModelSpec.feature_blocks`, the module
classes whose `__call__` output is a block output (the residual blocks of the CNNs, the
encoder layers of a ViT, the decoder layers of a language model). A forward pass records
every block call in call order through `flax.linen.intercept_methods`, so no model code
changes and a user's model needs only to name its block classes. Blocks must not nest.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Callable

import flax.linen as nn
import jax
import jax.numpy as jnp

# A block's output is compared with the dense one's relative to the dense feature's own
# size; the floor keeps an all-zero dense feature (a dead block) from dividing by zero.
_SCALE_FLOOR = 1e-12


@dataclasses.dataclass
class BlockCalls:
  """What one forward pass saw of its blocks, in call order."""

  inputs: list = dataclasses.field(default_factory=list)
  outputs: list = dataclasses.field(default_factory=list)


def _is_block(context: Any, blocks: tuple[type, ...]) -> bool:
  return context.method_name == "__call__" and isinstance(context.module, blocks)


def apply_recording_blocks(apply: Callable[[], Any], blocks: tuple[type, ...],
                           dense_inputs: list | None = None) -> tuple[Any, BlockCalls]:
  """Runs `apply()` (a model's `apply` with its arguments bound) and returns its result and
  the blocks' inputs and outputs.

  With `dense_inputs`, the i-th block call reads `dense_inputs[i]` instead of what the
  network before it computed: each block is then run on the dense network's input to it,
  and nothing upstream of a block receives a gradient through it.
  """
  calls = BlockCalls()

  def interceptor(next_fun, args, kwargs, context):
    if not _is_block(context, blocks):
      return next_fun(*args, **kwargs)
    if dense_inputs is not None:
      if len(calls.inputs) >= len(dense_inputs):
        raise ValueError("the model called more blocks than the dense pass recorded; "
                         "feature blocks must not nest or depend on the input")
      args = (dense_inputs[len(calls.inputs)], *args[1:])
    calls.inputs.append(args[0])
    output = next_fun(*args, **kwargs)
    calls.outputs.append(output)
    return output

  with nn.intercept_methods(interceptor):
    result = apply()
  if not calls.outputs:
    raise ValueError(f"no module of the feature block classes "
                     f"{', '.join(b.__name__ for b in blocks)} ran in the forward pass")
  return result, calls


def relative_error(student: jax.Array, dense: jax.Array) -> jax.Array:
  """||student - dense||^2 / ||dense||^2 over the batch: the error on the dense feature's
  scale, so blocks of any width and depth weigh alike."""
  student, dense = student.astype(jnp.float32), dense.astype(jnp.float32)
  return (jnp.sum(jnp.square(student - dense))
          / jnp.maximum(jnp.sum(jnp.square(dense)), _SCALE_FLOOR))


def feature_loss(student_outputs: list, dense_outputs: list) -> jax.Array:
  """The mean over blocks of each block output's relative error against the dense one."""
  if len(student_outputs) != len(dense_outputs):
    raise ValueError(f"{len(student_outputs)} student block outputs against "
                     f"{len(dense_outputs)} dense ones")
  return jnp.mean(jnp.stack([relative_error(s, d)
                             for s, d in zip(student_outputs, dense_outputs)]))


def check_fields(search: Any) -> None:
  """Raises ValueError (one line) for search.feature_distill_weight < 0 or a
  search.local_fraction outside [0, 1)."""
  if search.feature_distill_weight < 0:
    raise ValueError(f"search.feature_distill_weight must be >= 0 (0: off), got "
                     f"{search.feature_distill_weight}")
  if not 0.0 <= search.local_fraction < 1.0:
    raise ValueError(f"search.local_fraction must be in [0, 1) (0: off), got "
                     f"{search.local_fraction}")


def uses_blocks(search: Any) -> bool:
  """Whether the search's loss reads the dense network's blocks."""
  return search.feature_distill_weight > 0 or search.local_fraction > 0


def local_steps(search: Any, total_steps: int) -> int:
  """The steps of search.local_fraction's local stage at the start of the search (0: off)."""
  return int(round(search.local_fraction * total_steps))


def targeted_blocks(search: Any, feature_blocks: tuple[type, ...]) -> tuple[type, ...]:
  """The model's `feature_blocks` where the search reads them, else none."""
  return feature_blocks if uses_blocks(search) else ()


def check_blocks(model_name: str, blocks: tuple[type, ...], search: Any) -> None:
  """`check_fields`, and a one-line ValueError when a block-wise target is asked of a model
  that names no blocks."""
  check_fields(search)
  if uses_blocks(search) and not blocks:
    raise ValueError(f"model {model_name} names no feature blocks, so "
                     "search.feature_distill_weight and search.local_fraction cannot be used; "
                     "set them to 0 or register the model with ModelSpec.feature_blocks")
