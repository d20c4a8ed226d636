"""Compiled programs stay for a process's later runs until it holds half the memory-map
limit's mappings; then every kept program is dropped."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from jackpot_jax import bounded_cache
from jackpot_jax.run import program_memory


def _a_compiled_program_and_a_kept_value():
  double = jax.jit(lambda x: 2 * x)
  double(jnp.ones(3)).block_until_ready()
  kept = bounded_cache.BoundedCache(2)
  kept.get("program", lambda: double)
  return double, kept


def test_programs_stay_while_the_process_holds_under_half_the_limit(monkeypatch):
  monkeypatch.setattr(program_memory, "mapping_limit", lambda: 10**9)
  double, kept = _a_compiled_program_and_a_kept_value()
  assert not program_memory.release_if_crowded()
  assert double._cache_size() == 1 and len(kept) == 1


def test_every_kept_program_is_dropped_over_half_the_limit(monkeypatch):
  count = program_memory.mappings()
  assert count is not None and count > 100  # a process with JAX loaded maps hundreds
  monkeypatch.setattr(program_memory, "mapping_limit", lambda: 2 * count - 2)
  double, kept = _a_compiled_program_and_a_kept_value()
  assert program_memory.release_if_crowded()
  assert double._cache_size() == 0 and len(kept) == 0


def test_uncounted_mappings_release_every_time(monkeypatch):
  monkeypatch.setattr(program_memory, "mappings", lambda: None)
  double, kept = _a_compiled_program_and_a_kept_value()
  assert program_memory.release_if_crowded()
  assert double._cache_size() == 0 and len(kept) == 0
