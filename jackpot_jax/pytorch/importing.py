"""PyTorch checkpoint -> Flax variables for a registered model, strict by default.

Names follow `torch_module_name`: the Flax leaf ("params", "layer1_0", "conv1", "kernel")
is the tensor "layer1.0.conv1.weight" (or one of the ModelSpec's torch_aliases). Kernels
are transposed (OIHW -> HWIO, (out, in) -> (in, out)); a 1x1 conv stored for a Dense
layer (the lottery-jackpots authors' classifiers) is squeezed first. BN's weight, bias,
running_mean and running_var become scale, bias, mean and var; other params (a ViT's
cls_token, position_embeddings) keep their name and layout. num_batches_tracked is kept
aside for export. The authors' pruned checkpoints carry `<layer>.mask` (scores) and
`<layer>.b_mask` (binary mask) beside each weight; they import as a jackpot.

A model class may offer two hooks. `checkpoint_input_shape(shapes, default)` gives the
input a checkpoint was made for when parameter shapes depend on its size (a ViT's position
embeddings follow its patch grid). `checkpoint_layouts()` names other key layouts it
imports (timm's, with its fused qkv), renamed as `renaming` describes; errors and exports
keep the checkpoint's names.

A checkpoint that does not fit the named model but has the key names of another
registered model (block indices aside) says which, so a wrong model name reads as one.
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
import re
import warnings
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jackpot_jax.bounded_cache import BoundedCache
from jackpot_jax.errors import CheckpointMismatchError
from jackpot_jax.pytorch.layout import (CheckpointLayout, TensorSource, Transform, to_flax,
                                        torch_shape)
from jackpot_jax.pytorch.reading import read_checkpoint
from jackpot_jax.pytorch.renaming import renamed_tensors
from jackpot_jax.pytorch import tensor_files
from jackpot_jax.models import ModelSpec, get_model_spec, model_names, torch_module_name

PyTree = Any
FlaxPath = tuple[str, ...]

VARIABLE_COLLECTIONS = ("params", "batch_stats")
_TORCH_PARAM_NAMES = {"kernel": "weight", "scale": "weight", "bias": "bias",
                      "mean": "running_mean", "var": "running_var"}
_JACKPOT_ROLES = {"mask": "scores", "b_mask": "mask"}
_BN_COUNTER = "num_batches_tracked"
_LISTED = 3
_ALREADY_REPORTED = ""


@dataclasses.dataclass(frozen=True)
class ImportedModel:
  """A registered Flax model with a PyTorch checkpoint's weights.

  Attributes:
    model: the Flax module, called `model.apply(variables, x_nhwc, train=bool)`.
    variables: {"params", "batch_stats"} filled from the checkpoint.
    layout: the record export needs to write a checkpoint with the same names.
    scores: the authors' `.mask` scores as a tree mirroring params (kernels only), or None.
    masks: the authors' `.b_mask` binary masks, bool, same tree shape, or None.
    source_sha256: hash of the imported weights (`weights_sha256`).
    input_shape: the (H, W, C) input the checkpoint's parameters were made for; C is the
      channel count its first layer takes.
  """

  model: nn.Module
  variables: dict[str, PyTree]
  layout: CheckpointLayout
  scores: PyTree | None
  masks: PyTree | None
  source_sha256: str
  input_shape: tuple[int, ...] = ()


def import_torch(source: str | os.PathLike | Mapping[str, Any], model_name: str,
                 num_classes: int, *, strict: bool = True,
                 model_kwargs: Mapping[str, Any] | None = None) -> ImportedModel:
  """Builds `model_name` and fills its variables from a PyTorch checkpoint.

  Args:
    source: a .pth/.pt/.th/.tar or .safetensors path, a Hugging Face model folder (its
      weights; `hf_folder` reads its config.json), or a state_dict; a bare state_dict or
      one under "state_dict" / "model"; "module." prefixes are stripped.
    model_name: a registered model, e.g. "resnet50".
    num_classes: the classifier's width.
    strict: when False, checkpoint tensors the model lacks are ignored and variables the
      checkpoint lacks keep their random initialisation, each with a warning. Shape
      mismatches always raise.
    model_kwargs: extra builder arguments (e.g. {"width": 2} for the paper's ResNet-32).

  Returns:
    The model, its variables, the layout for export and, for the authors' pruned
    checkpoints, their scores and masks.

  Raises:
    CheckpointReadError: the file is missing, truncated or not a checkpoint.
    CheckpointMismatchError: names or shapes do not correspond (one line listing them).
  """
  spec = get_model_spec(model_name)
  model_kwargs = dict(model_kwargs or {})
  model = spec.build(num_classes=num_classes, **model_kwargs)
  raw = read_checkpoint(source)
  where = "the state_dict passed in" if isinstance(source, Mapping) else f"checkpoint {source}"
  renamed = renamed_tensors(getattr(model, "checkpoint_layouts", dict)(), raw.tensors)
  input_shape = _input_shape(spec, model, renamed.tensors)
  shapes = _variable_shapes(model, input_shape)
  sources, missing, unexpected, mismatched = _match(renamed.tensors, shapes,
                                                    spec.torch_aliases)
  missing = _unique(renamed.theirs(name) for name in missing)
  unexpected = _unique(renamed.theirs(name) for name in unexpected)
  mismatched = renamed.problems + [f"{renamed.theirs(name, rows=True)} {detail}"
                                   for name, detail in mismatched]
  if mismatched or (strict and (missing or unexpected)):
    look_alikes = _look_alikes(raw.tensors, model_name, num_classes)
    if look_alikes:
      raise CheckpointMismatchError(f"{where} does not fit model {model_name!r}: {look_alikes}")
    raise CheckpointMismatchError(_mismatch_message(
        where, model_name, num_classes, missing, unexpected, mismatched))
  if missing or unexpected:
    warnings.warn(f"non-strict import of {where}: {_listing('keys left at random init', missing)}"
                  f"; {_listing('checkpoint keys ignored', unexpected)}", stacklevel=2)

  theirs = tuple(renamed.original(s) for s in sources)
  sha256 = weights_sha256({s.key: raw.tensors[s.key] for s in theirs if s.role == "variable"})
  layout = CheckpointLayout(model_name, num_classes, model_kwargs, theirs, raw.wrapper,
                            raw.prefix, raw.file_format, sha256)
  # device_put, not jnp.asarray: that stages each array through a small program compiled
  # (or loaded) per shape, a dozen or hundreds of them at a process's start.
  flat = {s.target: jax.device_put(to_flax(_float32(renamed.tensors[s.key]), s.transform))
          for s in sources if s.role == "variable"}
  if missing:
    flat = {**_initial_variables(model, input_shape), **flat}
  return ImportedModel(
      model=model,
      variables=traverse_util.unflatten_dict(flat),
      layout=layout,
      scores=_jackpot_tree(renamed.tensors, sources, "scores"),
      masks=_jackpot_tree(renamed.tensors, sources, "mask"),
      source_sha256=sha256,
      input_shape=tuple(input_shape))


def weights_sha256(tensors: Mapping[str, Any]) -> str:
  """sha256 over name, dtype, shape and bytes of each tensor (array or torch tensor), in
  name order.

  Independent of the file's container, wrapper and prefix, so the same weights saved
  two ways hash alike and a masks file can check it was made for them.
  """
  digest = hashlib.sha256()
  for key in sorted(tensors):
    tensor = tensor_files.as_array(tensors[key])
    digest.update(f"{key}|{_dtype_name(tensor)}|{tuple(tensor.shape)}|".encode())
    digest.update(np.ascontiguousarray(tensor).tobytes())
  return digest.hexdigest()


_BLOCK_INDEX = re.compile(r"\.\d+(?=\.)")
_COMPANIONS = (*_JACKPOT_ROLES, _BN_COUNTER)


def _key_names(spec: ModelSpec, tensors: Mapping[str, np.ndarray], num_classes: int
               ) -> tuple[set[str], set[str], bool, str] | None:
  """The checkpoint's key names read in `spec`'s layouts, and those of `spec`'s model at
  its default sizes; None, without tracing the model, when the checkpoint lacks the
  model's first layer.

  Returns:
    (the checkpoint's names, the model's, whether every tensor fits, the name of the
    layout the checkpoint was read in), or None.
  """
  model = spec.build(num_classes=num_classes)
  layouts = getattr(model, "checkpoint_layouts", dict)()
  renamed = renamed_tensors(layouts, tensors)
  if f"{spec.first_layer}.weight" not in renamed.tensors:
    return None
  shapes = _variable_shapes(model, _input_shape(spec, model, renamed.tensors))
  sources, missing, unexpected, mismatched = _match(renamed.tensors, shapes,
                                                    spec.torch_aliases)
  both = {s.key for s in sources if s.role == "variable"} | {key for key, _ in mismatched}
  theirs = both | {key for key in unexpected if key.rpartition(".")[2] not in _COMPANIONS}
  layout = next((name for name, names in layouts.items() if names is renamed.names),
                spec.layout_name)
  fits = not (missing or unexpected or mismatched or renamed.problems)
  return theirs, both | set(missing), fits, layout


def _blocks_aside(names: set[str]) -> set[str]:
  return {_BLOCK_INDEX.sub(".#", name) for name in names}


def _look_alikes(tensors: Mapping[str, np.ndarray], model_name: str,
                 num_classes: int) -> str:
  """Which other registered models have the checkpoint's key names: 'its keys are those
  of ...', or "" when `model_name` has them block indices aside (then only sizes differ)
  or no model has. Traces the candidate models abstractly: for error messages only."""
  named = _key_names(get_model_spec(model_name), tensors, num_classes)
  if named is not None and _blocks_aside(named[0]) == _blocks_aside(named[1]):
    return ""
  fitting, same_keys, same_blocks = [], [], []
  for name in model_names():
    names = None if name == model_name else _key_names(get_model_spec(name), tensors,
                                                       num_classes)
    if names is None:
      continue
    theirs, ours, fits, layout = names
    if fits:
      fitting.append((name, layout))
    elif theirs == ours:
      same_keys.append((name, layout))
    elif _blocks_aside(theirs) == _blocks_aside(ours):
      same_blocks.append((name, layout))
  for found, sizes in ((fitting, ""), (same_keys, " at other sizes"),
                       (same_blocks, " with another number of blocks")):
    if found:
      # Every name: the registry is small, and the size-agnostic ones (vit) belong in it.
      return (f"its keys are those of {', '.join(name for name, _ in found)} ({found[0][1]} "
              f"layout){sizes}; set the model name (model.name) to one of them")
  return ""


def _unique(items) -> list[str]:
  return list(dict.fromkeys(items))


def _input_shape(spec: ModelSpec, model: nn.Module, tensors: Mapping[str, np.ndarray]
                 ) -> tuple[int, ...]:
  """The input the checkpoint's parameter shapes were made for.

  Kernel shapes follow the input's channels, so the spec's input shape takes the channel
  count the checkpoint's first conv expects (a grayscale checkpoint imports as a
  1-channel model). The spatial size changes no CNN parameter; a model whose parameters
  do depend on it says so through `checkpoint_input_shape`.
  """
  shape = spec.input_shape
  weight = tensors.get(f"{spec.first_layer}.weight")
  if weight is not None and weight.ndim == 4:
    shape = (*spec.input_shape[:-1], weight.shape[1])
  hook = getattr(model, "checkpoint_input_shape", None)
  if hook is None:
    return shape
  return tuple(hook({key: tuple(tensor.shape) for key, tensor in tensors.items()}, shape))


def _variable_shapes(model: nn.Module, input_shape: tuple[int, ...]
                     ) -> dict[FlaxPath, tuple[int, ...]]:
  """Flattened Flax path -> shape, traced abstractly so nothing is computed; kept for the
  process's later imports of an equal model (`_shapes`)."""
  def trace() -> dict[FlaxPath, tuple[int, ...]]:
    def init(inputs):  # the key made inside the trace: made outside, it is a program run
      return model.init(jax.random.key(0), inputs, train=False)

    abstract = jax.eval_shape(init, jax.ShapeDtypeStruct((1, *input_shape), jnp.float32))
    flat = traverse_util.flatten_dict({c: abstract[c] for c in VARIABLE_COLLECTIONS
                                       if c in abstract})
    return {path: tuple(leaf.shape) for path, leaf in flat.items()}

  return dict(_shapes.get((model, tuple(input_shape)), trace))


# `_variable_shapes` by model (Flax modules compare by their fields) and input shape: a
# sweep's or a test session's later imports, and the look-alike search of an error
# message (every registered model), trace each model once, not once per import.
_shapes = BoundedCache(64)


def _initial_variables(model: nn.Module, input_shape: tuple[int, ...]
                       ) -> dict[FlaxPath, jax.Array]:
  variables = model.init(jax.random.key(0), jnp.zeros((1, *input_shape)), train=False)
  return traverse_util.flatten_dict({c: variables[c] for c in VARIABLE_COLLECTIONS
                                     if c in variables})


def _candidate_keys(path: FlaxPath, aliases: Mapping[str, tuple[str, ...]]) -> list[str]:
  """Checkpoint names a Flax leaf may have: its own first, then the spec's aliases."""
  module = torch_module_name(path[1:-1])
  modules = [module]
  for ours, theirs in aliases.items():
    if module == ours or module.startswith(ours + "."):
      modules += [alias + module[len(ours):] for alias in theirs]
  param = _TORCH_PARAM_NAMES.get(path[-1], path[-1])
  return [f"{name}.{param}" if name else param for name in modules]


def _transform(path: FlaxPath, flax_shape: tuple[int, ...], source_shape: tuple[int, ...]
               ) -> Transform:
  if path[-1] != "kernel":
    return "identity"
  if len(flax_shape) == 4:
    return "conv"
  return "conv1x1_linear" if len(source_shape) == 4 else "linear"


def _match(tensors: Mapping[str, np.ndarray], shapes: Mapping[FlaxPath, tuple[int, ...]],
           aliases: Mapping[str, tuple[str, ...]]
           ) -> tuple[tuple[TensorSource, ...], list[str], list[str], list[tuple[str, str]]]:
  """Pairs checkpoint tensors with Flax leaves.

  Returns:
    (sources in checkpoint order, missing keys, unexpected keys, shape mismatches as
    (key, what differs)).
  """
  sources, claimed, missing, mismatched = _match_variables(tensors, shapes, aliases)
  unexpected = []
  for key, tensor in tensors.items():
    if key in sources or key in claimed:
      continue
    companion = _companion(key, tensor, sources, claimed)
    if isinstance(companion, TensorSource):
      sources[key] = companion
    elif companion is None:
      unexpected.append(key)
    elif isinstance(companion, tuple):
      mismatched.append(companion)
  ordered = tuple(sources[key] for key in tensors if key in sources)
  return ordered, missing, unexpected, mismatched


def _match_variables(tensors: Mapping[str, np.ndarray],
                     shapes: Mapping[FlaxPath, tuple[int, ...]],
                     aliases: Mapping[str, tuple[str, ...]]
                     ) -> tuple[dict[str, TensorSource], set[str], list[str],
                                list[tuple[str, str]]]:
  """Finds each Flax leaf's tensor.

  Returns:
    (sources by key, keys found with a wrong shape, missing keys, shape mismatches).
  """
  sources, claimed, missing, mismatched = {}, set(), [], []
  for path, flax_shape in shapes.items():
    candidates = _candidate_keys(path, aliases)
    key = next((k for k in candidates if k in tensors), None)
    if key is None:
      missing.append(candidates[0])
      continue
    source_shape = tuple(tensors[key].shape)
    transform = _transform(path, flax_shape, source_shape)
    expected = torch_shape(flax_shape, transform)
    if source_shape != expected:
      mismatched.append((key, f"checkpoint {source_shape} vs model {expected}"))
      claimed.add(key)
      continue
    sources[key] = TensorSource(key, source_shape, _dtype_name(tensors[key]), "variable", path,
                                transform)
  return sources, claimed, missing, mismatched


def _companion(key: str, tensor: np.ndarray, sources: Mapping[str, TensorSource],
               claimed: set[str]) -> TensorSource | tuple[str, str] | str | None:
  """Classifies a tensor that is no variable but may sit beside one.

  Returns:
    A source for the authors' `.mask` / `.b_mask` beside a weight or BN's counter; a
    shape mismatch (key, what differs); _ALREADY_REPORTED when its weight or BN is a
    reported shape mismatch; None when it is unexpected.
  """
  module, _, name = key.rpartition(".")
  if name in _JACKPOT_ROLES:
    weight = sources.get(f"{module}.weight")
    if f"{module}.weight" in claimed:
      return _ALREADY_REPORTED
    if weight is None or weight.target[-1] != "kernel":
      return None
    if tuple(tensor.shape) != weight.shape:
      return key, f"checkpoint {tuple(tensor.shape)} vs its weight {weight.shape}"
    return TensorSource(key, weight.shape, _dtype_name(tensor), _JACKPOT_ROLES[name],
                        weight.target, weight.transform)
  if name == _BN_COUNTER:
    if f"{module}.running_mean" in claimed:
      return _ALREADY_REPORTED
    if f"{module}.running_mean" in sources and tensor.size == 1:
      return TensorSource(key, tuple(tensor.shape), _dtype_name(tensor), "counter",
                          value=int(tensor.item()))
  return None


def _jackpot_tree(tensors: Mapping[str, np.ndarray], sources: tuple[TensorSource, ...],
                  role: str) -> PyTree | None:
  """The authors' scores (float32) or masks (bool) as a tree mirroring params, or None."""
  flat = {}
  for source in sources:
    if source.role == role:
      value = to_flax(_float32(tensors[source.key]), source.transform)
      flat[source.target[1:]] = jnp.asarray(value != 0 if role == "mask" else value)
  return traverse_util.unflatten_dict(flat) if flat else None


def _float32(tensor: np.ndarray) -> np.ndarray:
  return np.asarray(tensor, np.float32)


def _dtype_name(tensor: np.ndarray) -> str:
  """The dtype's name, as torch names it too ("float32", "bfloat16", "bool")."""
  return tensor.dtype.name


def _listing(what: str, items: list[str]) -> str:
  """The count and the first few, e.g. '2 missing keys (a, b)', so messages stay one line."""
  shown = ", ".join(items[:_LISTED]) + (", ..." if len(items) > _LISTED else "")
  return f"{len(items)} {what} ({shown})" if items else f"0 {what}"


def _mismatch_message(where: str, model_name: str, num_classes: int, missing: list[str],
                      unexpected: list[str], mismatched: list[str]) -> str:
  return (f"{where} does not fit model {model_name!r} with "
          f"num_classes={num_classes}: {_listing('missing keys', missing)}; "
          f"{_listing('unexpected keys', unexpected)}; "
          f"{_listing('shape mismatches', mismatched)}; check that the model name and "
          "num_classes are the checkpoint's (strict=False only skips missing/unexpected keys)")
