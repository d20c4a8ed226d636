"""Models chosen by name; each model file registers its builders and owns its PyTorch name map."""

from __future__ import annotations

import dataclasses
import re
from typing import Any, Callable, Mapping

import flax.linen as nn

from jackpot_jax import errors
from jackpot_jax.models.wrapper import Maskable, is_maskable, masked


@dataclasses.dataclass(frozen=True)
class ModelSpec:
  """What the rest of the library needs to know about a model family member.

  Attributes:
    name: registry name, e.g. "resnet20".
    build: `build(num_classes, **kwargs) -> nn.Module`; the module is called as
      `module(images_nhwc, train=bool)` (a language model: `module(token_ids, train=bool)`,
      `num_classes` its vocabulary) and returns logits. A model file gives the plain
      module's builder; `register` stores one that wraps it with `wrapper.masked`,
      so every registered model's `apply` takes a `masks` collection.
    classifier: PyTorch-style name of the final classifier layer (kept dense by default).
    first_layer: PyTorch-style name of the first convolution (or embedding).
    input_shape: default input without the batch axis: (height, width, channels) for
      this model's usual images, (tokens,) for a language model.
    torch_aliases: other PyTorch module names a checkpoint may use for one of our layers,
      e.g. {"linear": ("fc",)} for CIFAR-ResNet checkpoints that name the classifier fc.
    maskable: which params may carry a mask (`wrapper.is_maskable`: every kernel).
    inputs: "images" or "tokens" (a decoder-only language model).
    layout_name: what the key layout its own names spell is called in messages.
    feature_blocks: the module classes whose outputs are the network's block outputs,
      the targets of search.feature_distill_weight and search.local_fraction
      (`search.block_targets`); empty: the model names none, and both are refused.
  """

  name: str
  build: Callable[..., nn.Module]
  classifier: str
  first_layer: str
  input_shape: tuple[int, ...]
  torch_aliases: Mapping[str, tuple[str, ...]] = dataclasses.field(default_factory=dict)
  maskable: Maskable = is_maskable
  inputs: str = "images"
  layout_name: str = "PyTorch"
  feature_blocks: tuple[type, ...] = ()


@dataclasses.dataclass(frozen=True)
class FolderModel:
  """The registered model a Hugging Face config.json describes.

  Attributes:
    names: the registered names that build it, the one to resolve to first: a preset
      whose sizes are the config's, then the family's size-agnostic name.
    kwargs: every builder argument the config sets (sizes, epsilon, activation).
  """

  names: tuple[str, ...]
  kwargs: dict[str, Any]


_REGISTRY: dict[str, ModelSpec] = {}
# Hugging Face `model_type` -> reader of its config.json.
_FOLDER_READERS: dict[str, Callable[[Mapping[str, Any]], FolderModel]] = {}


def register(spec: ModelSpec) -> ModelSpec:
  """Adds a model; the stored spec builds the plain module wrapped by `masked`."""
  if spec.name in _REGISTRY:
    raise ValueError(f"model {spec.name!r} registered twice")
  plain = spec.build

  def build(num_classes: int, **kwargs) -> nn.Module:
    return masked(plain(num_classes=num_classes, **kwargs), spec.maskable)

  _REGISTRY[spec.name] = dataclasses.replace(spec, build=build)
  return _REGISTRY[spec.name]


def get_model_spec(name: str) -> ModelSpec:
  """Looks a model up by name, with a one-line error listing the known names."""
  if name not in _REGISTRY:
    raise ValueError(f"unknown model {name!r}{errors.did_you_mean(name, _REGISTRY)}; choose one "
                     f"of: {', '.join(sorted(_REGISTRY))}")
  return _REGISTRY[name]


def register_folder_reader(model_type: str,
                           reader: Callable[[Mapping[str, Any]], FolderModel]) -> None:
  """Lets Hugging Face folders whose config.json has this `model_type` import."""
  if model_type in _FOLDER_READERS:
    raise ValueError(f"Hugging Face model_type {model_type!r} registered twice")
  _FOLDER_READERS[model_type] = reader


def folder_model_types() -> list[str]:
  return sorted(_FOLDER_READERS)


def folder_model(model_type: str, config: Mapping[str, Any]) -> FolderModel:
  """The registered model a Hugging Face config.json of `model_type` describes.

  Raises:
    ValueError: no model family reads this model_type, or the config is not one it builds.
  """
  if model_type not in _FOLDER_READERS:
    raise ValueError(f"model_type {model_type!r} is not supported; supported: "
                     f"{', '.join(folder_model_types())}")
  return _FOLDER_READERS[model_type](config)


def model_names() -> list[str]:
  return sorted(_REGISTRY)


def build_model(name: str, num_classes: int, **kwargs) -> nn.Module:
  return get_model_spec(name).build(num_classes=num_classes, **kwargs)


_INDEX = re.compile(r"_(\d+)")


def torch_module_name(flax_path: tuple[str, ...]) -> str:
  """Maps a Flax module path to the PyTorch module name it mirrors.

  Flax module names replace PyTorch's ".<index>" by "_<index>" ("layer1.0" is
  "layer1_0", "features.1.conv.0.0" is features_1/conv_0_0), so the map is mechanical.
  """
  return ".".join(_INDEX.sub(r".\1", part) for part in flax_path)
