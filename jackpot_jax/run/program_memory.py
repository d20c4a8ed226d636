"""Compiled programs kept in memory, released before they reach Linux's memory-map limit.

Each compiled XLA:CPU executable holds its own memory mappings (3,000-6,000 for one tiny
search's programs), and JAX keeps every program while its function lives; so do the
programs a process keeps for its later runs (`bounded_cache`). A process that runs dozens
of searches (an experiment's sweep, a test session) approaches `vm.max_map_count` (65,530
by default), and the compile that crosses it fails inside XLA with a segmentation fault,
not a Python exception. `release_if_crowded` drops them all once the process holds half
the limit; below that, a later search of the same model reuses them instead of tracing,
lowering and loading them again.
"""

from __future__ import annotations

import gc
from pathlib import Path

import jax

from jackpot_jax import bounded_cache

_DEFAULT_LIMIT = 65530


def mappings() -> int | None:
  """This process's memory mappings; None where /proc cannot tell."""
  try:
    with open("/proc/self/maps", "rb") as maps:
      return sum(1 for _ in maps)
  except OSError:
    return None


def mapping_limit() -> int:
  """Linux's vm.max_map_count (its default where it cannot be read)."""
  try:
    return int(Path("/proc/sys/vm/max_map_count").read_text())
  except (OSError, ValueError):
    return _DEFAULT_LIMIT


def release_if_crowded(fraction: float = 0.5) -> bool:
  """Drops every compiled program this process keeps (JAX's caches and the programs kept
  for later runs) once it holds more than `fraction` of the mapping limit, or whenever
  its mappings cannot be counted. Returns whether it released them."""
  count = mappings()
  if count is not None and count <= fraction * mapping_limit():
    return False
  bounded_cache.clear_all()
  jax.clear_caches()
  gc.collect()
  return True
