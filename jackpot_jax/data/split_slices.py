"""Split names with an optional slice, in TFDS's notation: 'test', 'test[:2000]',
'train[10%:]', 'validation[-500:]'.

A slice picks a contiguous range of a split's records, so a quick evaluation or a smaller
training set needs no copy of the data. It is parsed here rather than by TFDS
(`tfds.core.ReadInstruction`) because image folders, npz files and text folders take the
same notation, and their search processes do not import tensorflow_datasets.
"""

from __future__ import annotations

import dataclasses
import re

import numpy as np

_SLICED = re.compile(r"^(?P<name>[^\[\]]+)\[(?P<start>[^:\]]*):(?P<stop>[^:\]]*)\]$")
_BOUND = re.compile(r"^(?P<value>-?\d+)(?P<percent>%?)$")


@dataclasses.dataclass(frozen=True)
class SplitSlice:
  """A split's name and the [start:stop) of its records to read; each bound None (open),
  a record index (negative: from the end) or a percentage of the split."""

  name: str
  start: int | None = None
  stop: int | None = None
  start_percent: bool = False
  stop_percent: bool = False

  def suffix(self) -> str:
    """The slice as written after the name: '' for the whole split."""
    if self.start is None and self.stop is None:
      return ""
    def bound(value, percent):
      return "" if value is None else f"{value}{'%' if percent else ''}"
    return f"[{bound(self.start, self.start_percent)}:{bound(self.stop, self.stop_percent)}]"

  def rows(self, count: int) -> np.ndarray:
    """Indices of the sliced records among a split's `count` (percentages rounded to the
    nearest record, as TFDS rounds them)."""
    def index(value, percent):
      if value is None:
        return None
      return int(round(value * count / 100)) if percent else value
    start, stop = index(self.start, self.start_percent), index(self.stop, self.stop_percent)
    return np.arange(count)[start:stop]


def parse(value: str, key: str) -> SplitSlice:
  """The split and slice `value` names; `key` (the config field) names it in errors.

  Raises:
    ValueError (one line): not a split name, or a slice TFDS's notation does not allow.
  """
  if not isinstance(value, str) or not value.strip():
    raise ValueError(f"{key} must be a split name such as 'train', 'test' or 'validation', "
                     f"optionally sliced as 'test[:2000]' or 'train[:10%]', got {value!r}")
  if "[" not in value and "]" not in value:
    return SplitSlice(value)
  sliced = _SLICED.match(value)
  bounds = [sliced and _BOUND.match(sliced[side]) for side in ("start", "stop")]
  if not sliced or any(sliced[side] and not bound
                       for side, bound in zip(("start", "stop"), bounds)):
    raise ValueError(f"{key}={value!r} is not a split slice; write NAME[START:STOP] with "
                     "each bound empty, a record index or a percentage, e.g. 'test[:2000]' or "
                     "'train[10%:]'")
  (start, start_percent), (stop, stop_percent) = [
      (None, False) if bound is None else (int(bound["value"]), bool(bound["percent"]))
      for bound in bounds]
  for bound, percent in ((start, start_percent), (stop, stop_percent)):
    if percent and not -100 <= bound <= 100:
      raise ValueError(f"{key}={value!r}: a percentage bound must be within -100% and 100%")
  return SplitSlice(sliced["name"], start, stop, start_percent, stop_percent)


def sliced_rows(value: str, key: str, count: int) -> np.ndarray:
  """`parse(value, key).rows(count)`, refused when the slice holds no record.

  Raises:
    ValueError (one line): a bad slice, or one that selects nothing of the split.
  """
  rows = parse(value, key).rows(count)
  if not len(rows):
    raise ValueError(f"{key}={value!r} selects no record of the split's {count}; widen the "
                     "slice")
  return rows
