"""A decoder language model run one block at a time, and the inputs of a block's projections.

One-shot pruning (Wanda, SparseGPT) calibrates each decoder block on the hidden states that
the blocks before it, already pruned, produce; these functions give those pieces without
knowing the model family. A decoder block is the module named `<list>_<index>` on a maskable
kernel's path (`layers_3` in Llama and Qwen2, `h_3` in GPT-2: the layer lists
`causal_lm.hf_key` names), found and cloned by intercepting one abstract call of the whole
model; a block is called `block(hidden, attention_mask)` and its projections are the
modules whose `kernel` the model spec's `maskable` selects.
"""

from __future__ import annotations

import dataclasses
import functools
import re
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp
from flax import traverse_util

from jackpot_jax.models.wrapper import Maskable

PyTree = Any
Path = tuple[str, ...]

_LAYER_LIST_ENTRY = re.compile(r".+_\d+")


@dataclasses.dataclass(frozen=True)
class DecoderBlock:
  """One decoder block.

  Attributes:
    path: its params path, e.g. ("model", "layers_0").
    module: the block as a standalone, unbound module (`module.apply({"params":
      params_at(params, path)}, hidden, None)` runs it).
    input_groups: its maskable kernels' paths relative to `path`, in call order, grouped
      by the tensor their modules read: ((q_proj, k_proj, v_proj), (o_proj,), (gate_proj,
      up_proj), (down_proj,)) in Llama, each path ending in "kernel".
  """

  path: Path
  module: nn.Module
  input_groups: tuple[tuple[Path, ...], ...]


def block_path(kernel_path: Path) -> Path:
  """The path of the decoder block holding a kernel: up to its first `<list>_<index>`."""
  for depth, name in enumerate(kernel_path[:-1]):
    if _LAYER_LIST_ENTRY.fullmatch(name):
      return kernel_path[:depth + 1]
  raise ValueError(f"{'/'.join(kernel_path)} is in no decoder block (a module named "
                   "<list>_<index>, such as layers_0); one-shot pruning calibrates blocks")


def params_at(params: PyTree, path: Path) -> PyTree:
  """The subtree of `params` at `path`."""
  return functools.reduce(lambda tree, name: tree[name], path, params)


def decoder_blocks(model: nn.Module, params: PyTree, maskable: Maskable,
                   tokens_shape: tuple[int, int]) -> tuple[DecoderBlock, ...]:
  """Every decoder block holding a maskable kernel, in the order the model calls them.

  Args:
    model: the decoder (plain or masked-model wrapper).
    params: its params.
    maskable: `maskable(path, shape)`, the kernels to prune.
    tokens_shape: (batch, seq) of the calls to come (GPT-2 checks seq).
  """
  block_of = {path[:-1]: block_path(path)
              for path, leaf in traverse_util.flatten_dict(params).items()
              if maskable(path, tuple(leaf.shape))}
  block_paths = set(block_of.values())
  modules: dict[Path, nn.Module] = {}
  # Per block, [input tensor, kernel paths reading it]: holding the tensors keeps each
  # distinct, where an identity of a freed one could be reused.
  groups: dict[Path, list[tuple[Any, list[Path]]]] = {}

  def record(next_fun, args, kwargs, context):
    path = tuple(context.module.path)
    if context.method_name == "__call__":
      if path in block_paths and path not in modules:
        modules[path] = context.module.clone(parent=None, name=None)
      if path in block_of:
        block = block_of[path]
        readers = groups.setdefault(block, [])
        same = [paths for tensor, paths in readers if tensor is args[0]]
        if not same:
          readers.append((args[0], []))
          same = [readers[-1][1]]
        same[0].append(path[len(block):] + ("kernel",))
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    jax.eval_shape(lambda p, t: model.apply({"params": p}, t), params,
                   jax.ShapeDtypeStruct(tokens_shape, jnp.int32))
  called = {block + path for block, readers in groups.items()
            for _, paths in readers for path in paths}
  uncalled = [module + ("kernel",) for module in block_of if module + ("kernel",) not in called]
  if uncalled:
    raise ValueError(f"{', '.join('/'.join(p) for p in uncalled)}: the model never calls "
                     "this maskable module; one-shot pruning reads the inputs of its calls")
  return tuple(DecoderBlock(path, module, tuple(tuple(paths) for _, paths in groups[path]))
               for path, module in modules.items())


def without_blocks(params: PyTree, blocks: tuple[DecoderBlock, ...]) -> PyTree:
  """`params` without the blocks' subtrees: what `embedded_tokens` reads."""
  inside = {block.path for block in blocks}
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict(
      {path: leaf for path, leaf in flat.items()
       if not any(path[:len(block)] == block for block in inside)})


def embedded_tokens(model: nn.Module, outer_params: PyTree, tokens: jax.Array,
                    block_paths: tuple[Path, ...]) -> jax.Array:
  """The hidden states the first block receives, float32 [batch, seq, hidden].

  The model runs with every block skipped (its input passed on, its params never read, so
  `outer_params` may be `without_blocks(params)`); under `jax.jit` everything after the
  first block's input is dead code and is not computed.
  """
  first: list[jax.Array] = []

  def skip_blocks(next_fun, args, kwargs, context):
    if context.method_name == "__call__" and tuple(context.module.path) in block_paths:
      if not first:
        first.append(args[0])
      return args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(skip_blocks):
    model.apply({"params": outer_params}, tokens)
  return first[0].astype(jnp.float32)


def block_outputs(block: nn.Module, block_params: PyTree, hidden: jax.Array) -> jax.Array:
  """The block's output for hidden states [batch, seq, hidden]: every token attends."""
  return block.apply({"params": block_params}, hidden, None)


def projection_inputs(block: nn.Module, block_params: PyTree, hidden: jax.Array,
                      projections: tuple[Path, ...]) -> dict[Path, jax.Array]:
  """The input each of `projections` (kernel paths relative to the block) receives when the
  block runs on `hidden`."""
  inputs: dict[Path, jax.Array] = {}

  def record(next_fun, args, kwargs, context):
    kernel = tuple(context.module.path) + ("kernel",)
    if context.method_name == "__call__" and kernel in projections:
      inputs[kernel] = args[0]
    return next_fun(*args, **kwargs)

  with nn.intercept_methods(record):
    block_outputs(block, block_params, hidden)
  return inputs
