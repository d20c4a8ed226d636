"""A checkpoint's keys in another layout, renamed to ours and back.

A model's `checkpoint_layouts()` names the key layouts it imports besides its own,
{layout: {their module: ours}}, with "{i}" for an index and a tuple for a tensor that
stacks several of ours by rows (timm's fused `attn.qkv`: query, key and value). The import
renames a checkpoint through the layout that names most of its keys; errors and exports
name tensors as the checkpoint did, through `Renamed.theirs` and `Renamed.original`.
"""

from __future__ import annotations

import dataclasses
import re
from typing import Mapping

import numpy as np

from jackpot_jax.pytorch.layout import TensorSource

# What follows a module name in a key: ".weight", ".bias", the authors' ".mask", ...
_PARAM = r"(?P<param>\.[^.]+)?"


@dataclasses.dataclass(frozen=True)
class Renamed:
  """A checkpoint's tensors under our names, with the way back to theirs.

  Attributes:
    tensors: our name -> tensor, in the checkpoint's order; the parts of a fused tensor
      are its row blocks. Keys no name map covers keep their own name.
    origins: our name -> (their key, rows or None) for every entry of `tensors`.
    names: the layout's {their module: ours} map (see the module docstring), or {}.
    problems: one line per fused tensor that does not split into equal row blocks.
  """

  tensors: dict[str, np.ndarray]
  origins: dict[str, tuple[str, tuple[int, int] | None]]
  names: Mapping[str, str | tuple[str, ...]]
  problems: list[str]

  def theirs(self, name: str, rows: bool = False) -> str:
    """The checkpoint's key for one of our names (with its rows for a fused part)."""
    if name in self.origins:
      key, span = self.origins[name]
      return f"{key}[{span[0]}:{span[1]}]" if rows and span else key
    for their_module, ours in self.names.items():
      for our_module in (ours,) if isinstance(ours, str) else ours:
        match = re.fullmatch(_module_pattern(our_module) + _PARAM, name)
        if match:
          return _filled(their_module, match) + (match["param"] or "")
    return name

  def original(self, source: TensorSource) -> TensorSource:
    """`source` under the checkpoint's key, with its rows if it is a fused part."""
    key, rows = self.origins.get(source.key, (source.key, None))
    return dataclasses.replace(source, key=key, rows=rows)


def _module_pattern(template: str) -> str:
  """A regex for a module name template whose "{i}" stands for any index."""
  return re.escape(template).replace(re.escape("{i}"), r"(?P<i>\d+)")


def _filled(template: str, match: re.Match) -> str:
  return template.replace("{i}", match["i"]) if "{i}" in template else template


def _their_match(names: Mapping[str, str | tuple[str, ...]], key: str
                 ) -> tuple[re.Match, tuple[str, ...]] | None:
  """The name map's entry that covers `key`: the match and our module name(s)."""
  for their_module, ours in names.items():
    match = re.fullmatch(_module_pattern(their_module) + _PARAM, key)
    if match:
      return match, (ours,) if isinstance(ours, str) else tuple(ours)
  return None


def renamed_tensors(layouts: Mapping[str, Mapping[str, str | tuple[str, ...]]],
                    tensors: Mapping[str, np.ndarray]) -> Renamed:
  """The checkpoint under our names, through the layout that names most keys (more than
  half of them; else every key keeps its name)."""
  names, named = {}, 0
  for candidate in layouts.values():
    count = sum(_their_match(candidate, key) is not None for key in tensors)
    if count > named:
      names, named = candidate, count
  if named * 2 <= len(tensors):
    names = {}
  renamed, origins, problems = {}, {}, []
  for key, tensor in tensors.items():
    entry = _their_match(names, key)
    ours = [key] if entry is None else [_filled(o, entry[0]) + (entry[0]["param"] or "")
                                        for o in entry[1]]
    if any(name in renamed for name in ours):
      ours = [key]  # a second tensor for the same variable: left to be unexpected
    if len(ours) == 1:
      renamed[ours[0]] = tensor
      origins[ours[0]] = (key, None)
      continue
    if tensor.ndim == 0 or tensor.shape[0] % len(ours):
      problems.append(f"{key} checkpoint {tuple(tensor.shape)} does not split into "
                      f"{len(ours)} equal row blocks")
      continue
    size = tensor.shape[0] // len(ours)
    for index, name in enumerate(ours):
      renamed[name] = tensor[index * size:(index + 1) * size]
      origins[name] = (key, (index * size, (index + 1) * size))
  return Renamed(renamed, origins, names, problems)
