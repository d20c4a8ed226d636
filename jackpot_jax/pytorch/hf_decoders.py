"""Hugging Face decoder folders in and out: Llama, Qwen2 and GPT-2, strict and exact.

  model, params, hf_config = import_hf_decoder("Llama-3.2-1B")
  logits = model.apply({"params": params}, token_ids)
  export_hf_decoder("Llama-3.2-1B", params, masks, "Llama-3.2-1B-jackpot")  # W * M

A folder is what transformers' `save_pretrained` writes: config.json, then
model.safetensors or shards listed in model.safetensors.index.json, plus tokenizer and
generation files. config.json's model_type picks the registered model ("llama",
"qwen2", "gpt2") and gives every size. The model file's `hf_tensor` names each params
leaf's tensor and its transform (nn.Linear weights are transposed, GPT-2's Conv1D
weights are not). Import is strict: every tensor is used (a tied checkpoint's redundant
lm_head.weight must equal the embedding; the old causal-mask and rotary buffers that a
model's `hf_buffer` recognises carry no weights and are kept for export) and every
parameter filled, else one line lists what is missing, unexpected or mis-shaped. Tensors
are read as stored (float32, bfloat16 or float16) and converted to the requested params
dtype. A folder that stores only the base model's tensors (GPT-2's own checkpoints name
them h.0... rather than transformer.h.0...) imports as transformers loads it.

Export writes the same layout into a new folder: every file of the source but its weights
copied, and the weights, W * M where a mask is given, in the stored dtype under the same
names and in the same shard files, so `from_pretrained` loads it.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
from pathlib import Path
from typing import Any, Callable, Mapping, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from flax import traverse_util

from jackpot_jax import fileio
from jackpot_jax.errors import CheckpointMismatchError, CheckpointReadError, one_line
from jackpot_jax.models import ModelSpec, build_model, get_model_spec, gpt2, llama
from jackpot_jax.pytorch.layout import to_flax, to_torch, torch_shape
from jackpot_jax.pytorch import tensor_files
from jackpot_jax.pytorch.reading import read_checkpoint

PyTree = Any
FlaxPath = tuple[str, ...]

CONFIG = "config.json"
SINGLE_FILE = "model.safetensors"
INDEX = "model.safetensors.index.json"
PARAM_DTYPES = ("float32", "bfloat16", "float16")
# Weight files export does not copy: it writes the safetensors anew, and other formats'
# copies of the dense weights would contradict them.
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".pt", ".pth", ".ckpt", ".h5", ".msgpack")
_LISTED = 3


@dataclasses.dataclass(frozen=True)
class _Family:
  """A config.json model_type: the registered model and the architectures it holds."""

  model_name: str
  architectures: tuple[str, ...]
  model_kwargs: Callable[[Mapping[str, Any]], dict[str, Any]]


_FAMILIES = {
    "llama": _Family("llama", ("LlamaForCausalLM", "LlamaModel"), llama.hf_model_kwargs),
    "qwen2": _Family("qwen2", ("Qwen2ForCausalLM", "Qwen2Model"), llama.hf_model_kwargs),
    "gpt2": _Family("gpt2", ("GPT2LMHeadModel", "GPT2Model"), gpt2.hf_model_kwargs),
}


@dataclasses.dataclass(frozen=True)
class _Weights:
  """A folder's tensors under the names the model expects.

  Attributes:
    tensors: key -> tensor, in the files' order.
    files: key -> the file that holds it.
    stored: key -> its name in the file (without the base-model prefix, for folders that
      store the base model alone).
  """

  tensors: dict[str, np.ndarray]
  files: dict[str, str]
  stored: dict[str, str]


class _Source(NamedTuple):
  """Where a params leaf comes from: its key, the transform and the leaf's Flax shape."""

  key: str
  transform: str
  shape: tuple[int, ...]


@dataclasses.dataclass(frozen=True)
class _Match:
  """How a folder's tensors correspond to a model's params.

  Attributes:
    params: params path -> its source, for every params leaf.
    tied_copies: key -> the embedding's path, for a tied model's redundant lm_head.weight.
    buffers: keys of buffers without weights, written back as read.
  """

  params: dict[FlaxPath, _Source]
  tied_copies: dict[str, FlaxPath]
  buffers: tuple[str, ...]

  def by_key(self) -> dict[str, tuple[FlaxPath, str]]:
    """key -> (params path, transform) for every tensor written from params."""
    keyed = {source.key: (path, source.transform) for path, source in self.params.items()}
    keyed.update({key: (path, "identity") for key, path in self.tied_copies.items()})
    return keyed


def import_hf_decoder(folder: str | os.PathLike, *, dtype: str = "float32"
                      ) -> tuple[nn.Module, PyTree, dict[str, Any]]:
  """Builds the decoder a Hugging Face folder describes and fills its params.

  Args:
    folder: a local folder with config.json and model.safetensors (or
      model.safetensors.index.json and its shards).
    dtype: the params' dtype, "float32", "bfloat16" or "float16", whatever the stored one.

  Returns:
    (model, params, hf_config): the registered model (masked-model wrapper, called
    `model.apply({"params": params, "masks": masks}, token_ids)`), its params tree and
    config.json's content.

  Raises:
    ValueError: no config.json, an unsupported model_type or architecture, bad sizes.
    CheckpointReadError: a weight file is missing, truncated or damaged.
    CheckpointMismatchError: tensors and parameters do not correspond (one line).
  """
  if dtype not in PARAM_DTYPES:
    raise ValueError(f"dtype {dtype!r} is not supported; choose one of {', '.join(PARAM_DTYPES)}")
  folder = _local_folder(folder)
  config, model = _model(folder)
  weights = _read_weights(folder, model.hf_base_model)
  match = _match(model, weights, folder)
  # Cast on the host and device_put: jnp.asarray stages each array through a small
  # program compiled (or loaded) per shape and dtype.
  flat = {path: jax.device_put(np.asarray(to_flax(_float32(weights.tensors[source.key]),
                                                  source.transform), jnp.dtype(dtype)))
          for path, source in match.params.items()}
  return model, traverse_util.unflatten_dict(flat), config


def export_hf_decoder(folder_in: str | os.PathLike, params: PyTree, masks: PyTree | None,
                      folder_out: str | os.PathLike) -> Path:
  """Writes `folder_in` again with weights W * M, for transformers' `from_pretrained`.

  Args:
    folder_in: the folder the params were imported from.
    params: the params tree `import_hf_decoder` returned (or one of the same structure).
    masks: a tree mirroring params with a 0/1 (or bool) mask per maskable kernel (the
      model spec's `maskable`: the decoder blocks' projections); None writes W.
    folder_out: a new (or empty) folder; it is written complete or not at all.

  Returns:
    folder_out.

  Raises:
    ValueError: folder_out exists with files in it.
    CheckpointMismatchError: params or masks do not fit the folder's model.
  """
  folder_in = _local_folder(folder_in)
  folder_out = Path(folder_out)
  if folder_out.exists() and (not folder_out.is_dir() or any(folder_out.iterdir())):
    raise ValueError(f"{folder_out} already exists and is not an empty folder; choose a new "
                     "folder for the export")
  config, model = _model(folder_in)
  weights = _read_weights(folder_in, model.hf_base_model)
  match = _match(model, weights, folder_in)
  flat_params = _checked_params(params, match)
  flat_masks = _checked_masks(masks, flat_params, decoder_spec(config))
  sources, tensors = match.by_key(), {}
  for key, tensor in weights.tensors.items():
    if key in match.buffers:
      tensors[key] = tensor
      continue
    path, transform = sources[key]
    value = flat_params[path]
    if path in flat_masks:
      # where, not multiply: pruned entries become +0.0 even where W is negative.
      value = np.where(flat_masks[path], value, np.zeros((), value.dtype))
    tensors[key] = np.asarray(to_torch(value, transform)).astype(tensor.dtype)
  _write_folder(folder_in, folder_out, weights, tensors)
  return folder_out


def decoder_model_types() -> tuple[str, ...]:
  """The config.json model_types `import_hf_decoder` reads: "llama", "qwen2", "gpt2"."""
  return tuple(_FAMILIES)


def decoder_spec(hf_config: Mapping[str, Any]) -> ModelSpec:
  """The registered model of a config.json (its `maskable` selects the default masks)."""
  return get_model_spec(_family(hf_config).model_name)


def _local_folder(folder: str | os.PathLike) -> Path:
  folder = Path(folder)
  if not (folder / CONFIG).is_file():
    what = "is not a folder" if not folder.is_dir() else f"has no {CONFIG}"
    raise ValueError(f"{folder} {what}; give a Hugging Face model folder (config.json and "
                     "model.safetensors, as save_pretrained writes them)")
  return folder


def _family(config: Mapping[str, Any]) -> _Family:
  model_type = config.get("model_type")
  if model_type not in _FAMILIES:
    raise ValueError(f"config.json's model_type {model_type!r} is not supported; supported: "
                     f"{', '.join(_FAMILIES)}")
  return _FAMILIES[model_type]


def _model(folder: Path) -> tuple[dict[str, Any], nn.Module]:
  """config.json's content and the registered model it describes."""
  try:
    config = json.loads((folder / CONFIG).read_text())
  except (ValueError, UnicodeDecodeError) as error:
    raise ValueError(f"{folder / CONFIG} is not valid JSON ({one_line(error)})") from error
  if not isinstance(config, dict):
    raise ValueError(f"{folder / CONFIG} holds a {type(config).__name__}, not a JSON object")
  family = _family(config)
  architectures = config.get("architectures") or []
  unsupported = [a for a in architectures if a not in family.architectures]
  if unsupported:
    raise ValueError(f"{folder / CONFIG} describes {', '.join(unsupported)}; supported for "
                     f"model_type {config['model_type']!r}: {', '.join(family.architectures)}")
  kwargs = family.model_kwargs(config)
  return config, build_model(family.model_name, num_classes=kwargs.pop("vocab_size"), **kwargs)


def _read_weights(folder: Path, base_model: str) -> _Weights:
  """Every tensor of the folder's safetensors, named as the model expects them: a folder
  without a single name under `base_model` stores the base model alone, and its names
  get that prefix, as transformers loads such a checkpoint (GPT-2's own)."""
  if (folder / INDEX).is_file():
    weight_map = _weight_map(folder)
    files = list(dict.fromkeys(weight_map.values()))
  elif (folder / SINGLE_FILE).is_file():
    weight_map, files = None, [SINGLE_FILE]
  else:
    other = [p.name for p in folder.iterdir() if p.suffix in (".bin", ".pt", ".pth")]
    hint = (f" (it has {', '.join(sorted(other))}: save it again with "
            "save_pretrained(..., safe_serialization=True))" if other else "")
    raise CheckpointReadError(f"{folder} has neither {SINGLE_FILE} nor {INDEX}{hint}")
  tensors, where = {}, {}
  for name in files:
    if not (folder / name).is_file():
      raise CheckpointReadError(f"{folder / INDEX} lists {name}, which is missing from "
                                f"{folder}; copy the folder again")
    raw = read_checkpoint(folder / name)
    for key, tensor in raw.tensors.items():
      tensors[raw.prefix + key] = tensor
      where[raw.prefix + key] = name
  if weight_map is not None:
    _check_index(folder, weight_map, where)
  if any(key.startswith(base_model + ".") for key in tensors):
    return _Weights(tensors, where, {key: key for key in tensors})
  return _Weights({f"{base_model}.{k}": t for k, t in tensors.items()},
                  {f"{base_model}.{k}": f for k, f in where.items()},
                  {f"{base_model}.{k}": k for k in tensors})


def _weight_map(folder: Path) -> dict[str, str]:
  try:
    weight_map = json.loads((folder / INDEX).read_text())["weight_map"]
  except (ValueError, UnicodeDecodeError, KeyError, TypeError) as error:
    raise CheckpointReadError(f"{folder / INDEX} is not a safetensors index (a JSON object "
                              f"with a weight_map): {one_line(error)}") from error
  outside = sorted({f for f in weight_map.values() if Path(f).name != f})
  if outside:
    raise CheckpointReadError(f"{folder / INDEX} names shard files outside the folder "
                              f"({', '.join(outside[:_LISTED])})")
  return weight_map


def _check_index(folder: Path, weight_map: Mapping[str, str], where: Mapping[str, str]
                 ) -> None:
  """The index and its shards agree on which file holds which tensor."""
  absent = [k for k, f in weight_map.items() if where.get(k) != f]
  unlisted = [k for k in where if k not in weight_map]
  if absent or unlisted:
    absent_listed = _listing("listed tensors not in their shard", absent)
    unlisted_listed = _listing("tensors the index does not list", unlisted)
    raise CheckpointReadError(f"{folder / INDEX} does not match its shards: {absent_listed}; "
                              f"{unlisted_listed}")


def _match(model: nn.Module, weights: _Weights, folder: Path) -> _Match:
  """Pairs every params leaf with its tensor; one error line if anything does not fit."""
  abstract = jax.eval_shape(model.init, jax.random.key(0),
                            jax.ShapeDtypeStruct((1, 1), jnp.int32))
  params, missing, mismatched = {}, [], []
  for path, leaf in traverse_util.flatten_dict(abstract["params"]).items():
    key, transform = model.hf_tensor(path)
    expected = torch_shape(tuple(leaf.shape), transform)
    if key not in weights.tensors:
      missing.append(weights.stored.get(key, key))
    elif tuple(weights.tensors[key].shape) != expected:
      mismatched.append(f"{weights.stored[key]} {tuple(weights.tensors[key].shape)} vs "
                        f"model {expected}")
    else:
      params[path] = _Source(key, transform, tuple(leaf.shape))
  used = {source.key for source in params.values()}
  tied_copies = _tied_copies(model, weights, used, mismatched)
  buffers = tuple(k for k in weights.tensors if k not in used and model.hf_buffer(k))
  unexpected = [weights.stored[k] for k in weights.tensors
                if k not in used and k not in tied_copies and k not in buffers]
  if missing or unexpected or mismatched:
    raise CheckpointMismatchError(
        f"{folder} does not fit the model its config.json describes: "
        f"{_listing('missing tensors', missing)}; "
        f"{_listing('unexpected tensors', unexpected)}; "
        f"{_listing('shape mismatches', mismatched)}; check that the weights and config.json "
        "belong together")
  return _Match(params, tied_copies, buffers)


def _tied_copies(model: nn.Module, weights: _Weights, used: set[str],
                 mismatched: list[str]) -> dict[str, FlaxPath]:
  """A tied model's lm_head.weight, if the folder has one: it must equal the embedding,
  which is what transformers' tied model computes with."""
  if not model.tie_word_embeddings or "lm_head.weight" not in weights.tensors:
    return {}
  embedding_key, _ = model.hf_tensor(model.hf_embedding)
  if embedding_key not in used or not np.array_equal(weights.tensors["lm_head.weight"],
                                                  weights.tensors[embedding_key]):
    mismatched.append("lm_head.weight differs from the tied embedding "
                      f"{weights.stored.get(embedding_key, embedding_key)} (set "
                      "tie_word_embeddings to false in config.json if it is its own)")
    return {}
  return {"lm_head.weight": model.hf_embedding}


def _checked_params(params: PyTree, match: _Match) -> dict[FlaxPath, np.ndarray]:
  """The params as float32 host arrays by path, each checked against the folder's."""
  flat = {path: np.asarray(leaf, np.float32)
          for path, leaf in traverse_util.flatten_dict(dict(params)).items()}
  problems = [f"{'/'.join(path)} is missing" for path in match.params if path not in flat]
  problems += [f"{'/'.join(path)} has shape {flat[path].shape}, the model's {source.shape}"
               for path, source in match.params.items()
               if path in flat and flat[path].shape != source.shape]
  problems += [f"{'/'.join(path)} is no parameter of this model"
               for path in flat if path not in match.params]
  if problems:
    raise CheckpointMismatchError(f"params do not fit the folder's model: {len(problems)} "
                                  f"problems ({'; '.join(problems[:_LISTED])}); pass the "
                                  "params import_hf_decoder returned for this folder")
  return flat


def _checked_masks(masks: PyTree | None, params: Mapping[FlaxPath, np.ndarray],
                   spec: ModelSpec) -> dict[FlaxPath, np.ndarray]:
  """Masks as bool arrays by kernel path, each a 0/1 array of a maskable kernel's shape."""
  if not masks:
    return {}
  checked, problems = {}, []
  for path, mask in traverse_util.flatten_dict(dict(masks)).items():
    mask, name = np.asarray(mask), "/".join(path)
    if path not in params or not spec.maskable(path, params[path].shape):
      problems.append(f"{name} is no maskable kernel")
    elif mask.shape != params[path].shape:
      problems.append(f"{name} has shape {mask.shape}, the kernel {params[path].shape}")
    elif mask.dtype != np.bool_ and not np.all((mask == 0) | (mask == 1)):
      problems.append(f"{name} is not binary")
    else:
      checked[path] = mask.astype(bool)
  if problems:
    raise CheckpointMismatchError(f"masks do not fit model {spec.name!r}: {len(problems)} "
                                  f"problems ({'; '.join(problems[:_LISTED])})")
  return checked


def _write_folder(folder_in: Path, folder_out: Path, weights: _Weights,
                  tensors: Mapping[str, np.ndarray]) -> None:
  """Writes the folder through `fileio.atomic_folder`: complete or absent. (Through
  torch: safetensors' NumPy writer has no bfloat16.)"""
  from safetensors.torch import save_file  # pylint: disable=import-outside-toplevel
  with fileio.atomic_folder(folder_out) as temporary:
    for source in sorted(folder_in.iterdir()):
      if source.is_file() and source.name != INDEX and source.suffix not in _WEIGHT_SUFFIXES:
        shutil.copy2(source, temporary / source.name)
    by_file: dict[str, dict[str, np.ndarray]] = {}
    for key, tensor in tensors.items():
      by_file.setdefault(weights.files[key], {})[weights.stored[key]] = (
          tensor_files.numpy_to_torch(tensor))
    for name, content in by_file.items():
      save_file(content, temporary / name, metadata={"format": "pt"})
    if (folder_in / INDEX).is_file():
      index = json.loads((folder_in / INDEX).read_text())
      total = sum(t.nbytes for t in tensors.values())
      index["metadata"] = {**index.get("metadata", {}), "total_size": total}
      (temporary / INDEX).write_text(json.dumps(index, indent=2, sort_keys=True) + "\n")


def _float32(tensor: np.ndarray) -> np.ndarray:
  return np.asarray(tensor, np.float32)


def _listing(what: str, items: list[str]) -> str:
  """The count and the first few, e.g. '2 missing tensors (a, b)', so errors stay one line."""
  shown = ", ".join(items[:_LISTED]) + (", ..." if len(items) > _LISTED else "")
  return f"{len(items)} {what} ({shown})" if items else f"0 {what}"
