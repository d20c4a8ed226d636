"""JAX's persistent compilation cache: compiled XLA programs kept in a folder, so that a
second search, a resume, `evaluate` or `export` loads them instead of compiling again.

`config.compilation_cache_dir` says where: `auto` (the default) keeps a folder JAX was
already given ($JAX_COMPILATION_CACHE_DIR, or `jax.config`), else uses
$XDG_CACHE_HOME/jackpot_jax/xla (~/.cache/jackpot_jax/xla); a local path or gs://bucket/path
names one; "" or "none" turns the cache off. `run.setup.setup_search` applies it before the
run compiles anything. The setting is process-wide, as JAX's is.

A cached program is the same executable a fresh compile produces, so results are bit for
bit the same with or without the cache (tests/run/test_compilation_cache.py). JAX trusts the
folder's contents: it must not be writable by other users.
"""

from __future__ import annotations

import contextlib
import os
import tempfile
import types
from pathlib import Path

from absl import logging
import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache

from jackpot_jax import fileio

def _jax_internals() -> types.SimpleNamespace:
  """JAX's file cache class, the module that opens it, and its entries' file suffix, where
  this JAX has them (private: checked before use, see `write_entries_atomically`)."""
  # pylint: disable=import-outside-toplevel,protected-access
  try:
    from jax._src import compilation_cache as internal, lru_cache as module
  except ImportError:
    return types.SimpleNamespace(internal=None, module=None, CACHE_SUFFIX="")
  return types.SimpleNamespace(internal=internal, module=module,
                               CACHE_SUFFIX=getattr(module, "_CACHE_SUFFIX", ""))


_JAX = _jax_internals()

FIELD = "compilation_cache_dir"
AUTO = "auto"
_OFF = ("", "none")
# JAX writes only programs that took at least jax_persistent_cache_min_compile_time_secs
# (default 1 s) to compile. On a CPU most of a run's compile time is in programs below
# that: the per-layer eager ops of set-up and evaluation, each a fraction of a second.
MIN_COMPILE_SECONDS = 0.0
_JAX_DEFAULT_MIN_COMPILE_SECONDS = 1.0


def default_dir() -> str:
  """The per-user folder of `auto`: $XDG_CACHE_HOME (or ~/.cache)/jackpot_jax/xla."""
  cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
  return os.path.join(cache_home, "jackpot_jax", "xla")


def check(value) -> None:
  """Rejects a `compilation_cache_dir` no run could use, in one line (no I/O)."""
  if value is not None and not isinstance(value, str):
    raise ValueError(f"{FIELD} must be a folder path, '{AUTO}', or 'none', got {value!r}")
  if value is None or value.strip().lower() in _OFF + (AUTO,):
    return
  fileio.as_path(value.strip(), FIELD)  # refuses URL schemes other than gs://


def resolve(value: str | None) -> str | None:
  """The folder `value` names (None: no cache); `auto` as the module docstring says."""
  check(value)
  text = "" if value is None else value.strip()
  if text.lower() in _OFF:
    return None
  if text == AUTO:
    given = jax.config.jax_compilation_cache_dir
    if given is not None:  # an empty $JAX_COMPILATION_CACHE_DIR turns the cache off
      return given or None
    return default_dir()
  return text if fileio.is_cloud(text) else os.path.abspath(os.path.expanduser(text))


def _prepare(directory: str) -> None:
  """Fails in one line when the folder cannot be written: JAX itself would only warn once
  and then compile everything again, silently, on every run."""
  if fileio.is_cloud(directory):
    fileio.check_reachable(fileio.as_path(directory, FIELD), FIELD, writable=True)
    return
  try:
    # Owner-only: JAX runs whatever executable it finds in the folder.
    os.makedirs(directory, mode=0o700, exist_ok=True)
    tempfile.TemporaryFile(dir=directory).close()  # a real write: read-only mounts, root
  except OSError as error:
    raise ValueError(f"{FIELD} {directory} is not a writable folder ({error.strerror}); "
                     f"choose another, or --config.{FIELD}=none to compile without it") from error


def _atomic_file_cache(base: type) -> type:
  """JAX's file cache with each entry written whole or not at all.

  JAX (0.10 to 0.12) writes an entry in place when the cache has no size limit (its
  default), so a process reading the folder while another writes, or after one was killed
  mid-write, reads a truncated program: a warning and a recompile at best, a decompression
  error at worst. Several processes share one folder as a matter of course (one per
  accelerator on a host, a search beside its `evaluate`, a resumed run after a kill), so
  each entry goes to a temporary file beside it and is renamed into place, which is atomic
  on a local file system. With a size limit JAX locks the folder itself; cloud folders
  are left to JAX.
  """

  class AtomicFileCache(base):
    """`base` writing each local entry through a rename."""

    def put(self, key: str, value: bytes) -> None:
      folder = str(self.path)
      if getattr(self, "eviction_enabled", True) or "://" in folder:
        super().put(key, value)
        return
      target = os.path.join(folder, f"{key}{_JAX.CACHE_SUFFIX}")
      if os.path.exists(target):
        return
      # Not named *-cache: JAX's listing of entries never sees a temporary file. Not
      # fileio.atomic_path: that syncs each file to disk, which a cache (hundreds of small
      # entries a search, any of them recompiled if lost) does not need to pay for.
      handle, temporary = tempfile.mkstemp(prefix=f".{key}.", suffix=".tmp", dir=folder)
      try:
        with os.fdopen(handle, "wb") as file:
          file.write(value)
        os.replace(temporary, target)
      except BaseException:
        with contextlib.suppress(OSError):
          os.unlink(temporary)
        raise

  return AtomicFileCache


def write_entries_atomically() -> bool:
  """Makes JAX's persistent cache, in this process, write each entry through a rename
  (`_atomic_file_cache`); the cache already open is switched too. Returns False, changing
  nothing, where this JAX's cache internals are not the ones this was written for."""
  # pylint: disable=protected-access
  base = getattr(_JAX.module, "LRUCache", None)
  if base is None or not _JAX.CACHE_SUFFIX or not callable(
      getattr(_JAX.internal, "get_file_cache", None)):
    return False
  if getattr(base, "_writes_atomically", False):
    return True
  atomic = _atomic_file_cache(base)
  atomic._writes_atomically = True
  _JAX.internal.LRUCache = atomic
  opened = getattr(_JAX.internal, "_cache", None)
  opened = getattr(opened, "_base_cache", opened)  # under jax_compilation_cache_check_contents
  if type(opened) is base:  # pylint: disable=unidiomatic-typecheck
    opened.__class__ = atomic
  return True


def enable(value: str | None) -> str | None:
  """Points JAX's persistent compilation cache at the folder `value` names, or turns it off;
  returns that folder (None: off). Call it before the programs it should cover compile.
  Entries are written whole or not at all (`write_entries_atomically`)."""
  if not jax.config.jax_enable_compilation_cache:  # JAX_ENABLE_COMPILATION_CACHE=false
    return None
  write_entries_atomically()
  directory = resolve(value)
  if directory is not None:
    try:
      _prepare(directory)
    except ValueError as error:
      if (value or "").strip() != AUTO:
        raise
      # The default must not stop a run that needs no cache (a read-only home, say).
      logging.warning("running without the compilation cache: %s", error)
      directory = None
  if directory != jax.config.jax_compilation_cache_dir:
    jax.config.update("jax_compilation_cache_dir", directory)
    # JAX opens its cache at the first compile after a folder is set and keeps it; a
    # different folder only takes effect after a reset.
    jax_cache.reset_cache()
  if (directory is not None and jax.config.jax_persistent_cache_min_compile_time_secs
      == _JAX_DEFAULT_MIN_COMPILE_SECONDS):  # a value the user chose is kept
    jax.config.update("jax_persistent_cache_min_compile_time_secs", MIN_COMPILE_SECONDS)
  return directory
