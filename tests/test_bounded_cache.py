"""BoundedCache keeps at most `limit` values, the least recently used dropped first, and
builds an unhashable key's value for that call alone."""

from __future__ import annotations

from jackpot_jax.bounded_cache import BoundedCache


def test_the_least_recently_used_value_goes_first_beyond_the_limit():
  cache, built = BoundedCache(2), []

  def build(name):
    return lambda: built.append(name) or name

  assert cache.get("a", build("a")) == "a" and cache.get("b", build("b")) == "b"
  assert cache.get("a", build("a")) == "a"  # kept: not built again, and now the newest
  cache.get("c", build("c"))  # drops "b", the least recently used
  cache.get("a", build("a"))
  cache.get("b", build("b"))
  assert built == ["a", "b", "c", "b"] and len(cache) == 2


def test_an_unhashable_key_is_built_each_call_and_not_kept():
  cache, built = BoundedCache(4), []
  key = ("model", [1, 2])  # a list field: unhashable
  for _ in range(2):
    assert cache.get(key, lambda: built.append(1) or "value") == "value"
  assert built == [1, 1] and len(cache) == 0
