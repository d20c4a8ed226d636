"""Choices a config names: one registry per kind (score inits, sparsity plans, pruning
criteria, augmentations), each filled by a decorator beside the code it names.

A registry is the alternative to an if/elif chain over names: a new choice is one
decorated function, and validation and error messages list whatever is registered when
they run, so a user module that registers more (imported by a config file, say) is
accepted like the built-in choices.
"""

from __future__ import annotations

from typing import Generic, TypeVar

from jackpot_jax import errors

Entry = TypeVar("Entry")


class Registry(Generic[Entry]):
  """Entries of one kind by name, in registration order.

  `field` is what the names are values of (e.g. "search.score_init"); the one-line errors
  start with it.
  """

  def __init__(self, field: str):
    self.field = field
    self._entries: dict[str, Entry] = {}

  def register(self, name: str, entry: Entry) -> Entry:
    """Adds `entry` as `name`; a name registered already is an error, not a replacement,
    so two modules cannot silently fight over one name."""
    if not isinstance(name, str) or not name:
      raise ValueError(f"a {self.field} name must be a non-empty string, got {name!r}")
    if name in self._entries:
      raise ValueError(f"{self.field} {name!r} is registered twice; choose another name")
    self._entries[name] = entry
    return entry

  def unregister(self, name: str) -> None:
    """Removes `name` (a notebook cell re-run, a test cleaning up)."""
    self.check(name)
    del self._entries[name]

  def check(self, name: str) -> None:
    """Raises ValueError in one line when `name` is not registered, naming the closest
    registered names and every one."""
    if not isinstance(name, str) or name not in self._entries:
      raise ValueError(f"unknown {self.field} {name!r}"
                       f"{errors.did_you_mean(str(name), self._entries)}; choose one of "
                       f"{', '.join(self._entries)}")

  def get(self, name: str) -> Entry:
    self.check(name)
    return self._entries[name]

  def names(self) -> tuple[str, ...]:
    return tuple(self._entries)
