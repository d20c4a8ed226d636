"""How a checkpoint's tensors map onto Flax variables, recorded so export can invert it.

A layout lists every tensor the import used, in the checkpoint's order, with its source
name, shape, dtype, role and the transform that turned it into a Flax leaf. Transforms
are transposes and reshapes only, so the inverse is exact. A fused tensor (timm's
`attn.qkv`, query, key and value stacked by rows) is one source per part, each naming its
rows; export stacks the parts again. The layout is plain data and round-trips through
JSON, so a search run can store it beside its own checkpoints.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any, Iterable, Literal

import numpy as np

Role = Literal["variable", "scores", "mask", "counter"]
Transform = Literal["identity", "conv", "linear", "conv1x1_linear"]

# PyTorch OIHW <-> Flax HWIO.
_OIHW_TO_HWIO = (2, 3, 1, 0)
_HWIO_TO_OIHW = (3, 2, 0, 1)


def to_flax(array: np.ndarray, transform: Transform) -> np.ndarray:
  """A PyTorch-layout array in the Flax layout."""
  if transform == "conv":
    return np.transpose(array, _OIHW_TO_HWIO)
  if transform == "linear":
    return np.transpose(array)
  if transform == "conv1x1_linear":
    return np.transpose(array[:, :, 0, 0])
  return array


def to_torch(array: np.ndarray, transform: Transform) -> np.ndarray:
  """The inverse of `to_flax`."""
  if transform == "conv":
    return np.transpose(array, _HWIO_TO_OIHW)
  if transform == "linear":
    return np.transpose(array)
  if transform == "conv1x1_linear":
    return np.transpose(array)[:, :, None, None]
  return array


def torch_shape(flax_shape: tuple[int, ...], transform: Transform) -> tuple[int, ...]:
  """The PyTorch shape whose `to_flax` has `flax_shape`."""
  if transform == "conv":
    return tuple(flax_shape[axis] for axis in _HWIO_TO_OIHW)
  if transform == "linear":
    return tuple(reversed(flax_shape))
  if transform == "conv1x1_linear":
    return tuple(reversed(flax_shape)) + (1, 1)
  return tuple(flax_shape)


@dataclasses.dataclass(frozen=True)
class TensorSource:
  """One checkpoint tensor and where it went.

  Attributes:
    key: the checkpoint name without wrapping prefix, e.g. "layer1.0.conv1.weight".
    shape: its PyTorch shape.
    dtype: its torch dtype name, e.g. "float32"; export casts back to it.
    role: "variable" (a Flax param or BN statistic), "scores" / "mask" (the authors'
      `<layer>.mask` / `<layer>.b_mask` of the weight at `target`), or "counter" (BN's
      num_batches_tracked, which Flax has no use for; kept to be written back).
    target: flattened Flax path including the collection, e.g.
      ("params", "layer1_0", "conv1", "kernel"); for scores and masks the kernel's path.
    transform: how the tensor became the Flax leaf.
    value: the counter's value, for role "counter".
    rows: for one part of a fused tensor, its rows [start, stop) of `key` (other sources
      hold the other rows; `shape` is the part's); None for a whole tensor.
  """

  key: str
  shape: tuple[int, ...]
  dtype: str
  role: Role
  target: tuple[str, ...] | None = None
  transform: Transform = "identity"
  value: int | None = None
  rows: tuple[int, int] | None = None


def by_key(sources: Iterable[TensorSource]) -> dict[str, tuple[TensorSource, ...]]:
  """Sources grouped by checkpoint key, in the checkpoint's order; a fused tensor's parts
  in row order."""
  groups: dict[str, list[TensorSource]] = {}
  for source in sources:
    groups.setdefault(source.key, []).append(source)
  return {key: tuple(sorted(parts, key=lambda s: s.rows or (0, 0)))
          for key, parts in groups.items()}


def whole_shape(parts: tuple[TensorSource, ...]) -> tuple[int, ...]:
  """The PyTorch shape of the tensor that `parts` (one key's sources) stack up to."""
  if parts[0].rows is None:
    return parts[0].shape
  return (sum(part.shape[0] for part in parts), *parts[0].shape[1:])


@dataclasses.dataclass(frozen=True)
class CheckpointLayout:
  """Everything export needs besides the variables: model identity, tensors, packaging.

  Attributes:
    model_name, num_classes, model_kwargs: how the Flax model was built.
    tensors: the used checkpoint tensors, in the checkpoint's order.
    wrapper: the dict key that held the state_dict ("state_dict", "model"), or None.
    prefix: the stripped name prefix ("module."), or "".
    file_format: "torch", "safetensors" or "memory".
    source_sha256: hash of the tensors that became variables (see `weights_sha256`).
  """

  model_name: str
  num_classes: int
  model_kwargs: dict[str, Any]
  tensors: tuple[TensorSource, ...]
  wrapper: str | None
  prefix: str
  file_format: str
  source_sha256: str

  def variable_sources(self) -> dict[tuple[str, ...], TensorSource]:
    """Flax path -> source, for the tensors that are variables."""
    return {t.target: t for t in self.tensors if t.role == "variable"}

  def to_json(self) -> str:
    return json.dumps(dataclasses.asdict(self))

  @classmethod
  def from_json(cls, text: str) -> CheckpointLayout:
    fields = json.loads(text)
    tensors = tuple(
        TensorSource(**{**t, "shape": tuple(t["shape"]),
                        "target": None if t["target"] is None else tuple(t["target"]),
                        "rows": None if t.get("rows") is None else tuple(t["rows"])})
        for t in fields.pop("tensors"))
    return cls(tensors=tensors, **fields)
