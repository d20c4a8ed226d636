"""Values built once per key and kept for the process's later uses, at most `limit` of
them, the least recently used dropped first: compiled programs and what they bind, which
a sweep's, a ladder's or a test session's later runs reuse instead of building again."""

from __future__ import annotations

import collections
import weakref
from typing import Any, Callable, Hashable

_ALL: weakref.WeakSet = weakref.WeakSet()


class BoundedCache:
  """`get(key, build)`: the value kept for `key`, else `build()`, kept; an unhashable key (a
  model or plan with a list or array field) gets `build()` for that call alone."""

  def __init__(self, limit: int):
    self.limit = limit
    self._values: collections.OrderedDict = collections.OrderedDict()
    _ALL.add(self)

  def get(self, key: Hashable, build: Callable[[], Any]) -> Any:
    try:
      hash(key)
    except TypeError:
      return build()
    if key in self._values:
      self._values.move_to_end(key)
    else:
      self._values[key] = build()
      if len(self._values) > self.limit:
        self._values.popitem(last=False)
    return self._values[key]

  def __len__(self) -> int:
    return len(self._values)

  def clear(self) -> None:
    self._values.clear()


def clear_all() -> None:
  """Empties every cache of the process (`run.program_memory`: compiled programs hold
  memory mappings, of which a process may have only so many)."""
  for cache in list(_ALL):
    cache.clear()
