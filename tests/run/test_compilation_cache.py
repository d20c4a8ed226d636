"""The persistent compilation cache: where `compilation_cache_dir` points JAX, and that a
program loaded from the cache computes what a fresh compile does, bit for bit."""

from __future__ import annotations

import os
import subprocess
import sys

import jax
from jax.experimental.compilation_cache import compilation_cache as jax_cache
import numpy as np
import pytest

from jackpot_jax.run import compilation_cache

from conftest import CHILD_XLA_FLAGS, REPO
from gcs_emulator import running_emulator

_CACHE_HITS = "/jax/compilation_cache/cache_hits"


@pytest.fixture
def session_cache_restored():
  """Puts JAX's cache settings back as the session had them (tests/conftest.py)."""
  directory = jax.config.jax_compilation_cache_dir
  min_seconds = jax.config.jax_persistent_cache_min_compile_time_secs
  yield
  jax.config.update("jax_compilation_cache_dir", directory)
  jax.config.update("jax_persistent_cache_min_compile_time_secs", min_seconds)
  jax_cache.reset_cache()


def test_auto_keeps_the_folder_jax_was_given_else_the_users_cache_folder(
    tmp_path, monkeypatch, session_cache_restored):
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))
  assert compilation_cache.resolve("auto") == str(tmp_path / "xdg" / "jackpot_jax" / "xla")
  monkeypatch.delenv("XDG_CACHE_HOME")
  monkeypatch.setenv("HOME", str(tmp_path / "home"))
  assert compilation_cache.resolve("auto") == str(
      tmp_path / "home" / ".cache" / "jackpot_jax" / "xla")
  jax.config.update("jax_compilation_cache_dir", str(tmp_path / "given"))
  assert compilation_cache.resolve("auto") == str(tmp_path / "given")
  jax.config.update("jax_compilation_cache_dir", "")  # JAX_COMPILATION_CACHE_DIR=""
  assert compilation_cache.resolve("auto") is None


@pytest.mark.parametrize("value", ["", "none", "None", None],
                         ids=["empty", "none", "None", "python_None"])
def test_none_or_empty_turns_the_cache_off(value, session_cache_restored):
  assert compilation_cache.enable(value) is None
  assert jax.config.jax_compilation_cache_dir is None


def test_a_named_folder_is_made_owner_only_and_jax_writes_every_program_there(
    tmp_path, session_cache_restored):
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 1.0)  # JAX's default
  folder = tmp_path / "new" / "xla"
  assert compilation_cache.enable(str(folder)) == str(folder)
  assert jax.config.jax_compilation_cache_dir == str(folder)
  assert folder.stat().st_mode & 0o777 == 0o700
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 0.0
  jax.jit(lambda x: x * 3 - 1)(np.arange(5.0)).block_until_ready()  # compiles in < 1 s
  assert [p for p in folder.iterdir() if p.name.endswith("-cache")]


def test_an_entry_is_written_whole_or_not_at_all(tmp_path, monkeypatch,
                                                 session_cache_restored):
  """A write that fails (or a process killed) before its rename leaves no entry, so a
  process sharing the folder never reads part of a program; the programs JAX compiles go
  through the same path."""
  from jax._src import compilation_cache as jax_internal  # pylint: disable=import-outside-toplevel
  assert compilation_cache.write_entries_atomically()
  cache = jax_internal.LRUCache(str(tmp_path / "direct"), max_size=-1)

  def interrupted(source, target):
    raise OSError("killed before the rename")

  with monkeypatch.context() as patch:
    patch.setattr(os, "replace", interrupted)
    with pytest.raises(OSError, match="killed before the rename"):
      cache.put("program", b"x" * 100_000)
  assert cache.get("program") is None and list((tmp_path / "direct").iterdir()) == []
  cache.put("program", b"x" * 100_000)
  assert cache.get("program") == b"x" * 100_000
  assert [p.name for p in (tmp_path / "direct").iterdir()] == ["program-cache"]

  folder = tmp_path / "compiled"
  compilation_cache.enable(str(folder))
  with monkeypatch.context() as patch:
    renamed = []
    patch.setattr(os, "replace", lambda source, target: renamed.append(target) or
                  os.rename(source, target))
    jax.jit(lambda x: x * 5 + 2)(np.arange(7.0)).block_until_ready()
  entries = sorted(str(p) for p in folder.iterdir())
  assert entries and entries == sorted(renamed), (entries, renamed)


def test_a_minimum_compile_time_the_user_chose_is_kept(tmp_path, session_cache_restored):
  jax.config.update("jax_persistent_cache_min_compile_time_secs", 5.0)
  compilation_cache.enable(str(tmp_path / "xla"))
  assert jax.config.jax_persistent_cache_min_compile_time_secs == 5.0


def test_an_unusable_default_folder_runs_without_the_cache(tmp_path, monkeypatch,
                                                           session_cache_restored):
  (tmp_path / "a_file").write_text("")
  jax.config.update("jax_compilation_cache_dir", None)
  monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "a_file"))
  assert compilation_cache.enable("auto") is None
  with pytest.raises(ValueError, match="is not a writable folder"):
    compilation_cache.enable(str(tmp_path / "a_file" / "xla"))


def test_other_url_schemes_and_non_strings_are_refused_in_one_line():
  with pytest.raises(ValueError, match=r"compilation_cache_dir https://host/xla is a https://"):
    compilation_cache.check("https://host/xla")
  with pytest.raises(ValueError, match="compilation_cache_dir must be a folder path"):
    compilation_cache.check(3)
  compilation_cache.check("gs://bucket/xla")


def test_a_program_loaded_from_the_cache_computes_bit_for_bit_what_a_fresh_compile_does(
    tiny_search, tmp_path, session_cache_restored):
  compilation_cache.enable(str(tmp_path / "xla"))
  hits = []

  def count_hits(event, **kwargs):
    if event == _CACHE_HITS:
      hits.append(event)

  jax.monitoring.register_event_listener(count_hits)
  try:
    results = []
    for _ in range(2):  # a fresh compile into the empty folder, then a load from it
      jax.clear_caches()  # forgets the compiled step in memory; the folder keeps it
      state, metrics = tiny_search.step(tiny_search.params, tiny_search.state,
                                        tiny_search.batch)
      results.append(jax.device_get((state, metrics)))
  finally:
    jax.monitoring.unregister_event_listener(count_hits)
  assert len(hits) >= 1, "the second step did not load from the cache"
  fresh, cached = (jax.tree_util.tree_leaves(r) for r in results)
  assert [np.asarray(a).tobytes() for a in fresh] == [np.asarray(b).tobytes() for b in cached]


_CHILD = """
import sys
import jax, jax.numpy as jnp
from jackpot_jax.run import compilation_cache
hits = []
jax.monitoring.register_event_listener(
    lambda event, **kwargs: hits.append(event) if event.endswith("cache_hits") else None)
compilation_cache.enable(sys.argv[1])
jax.jit(lambda x: jnp.sin(x) * 2 + 1)(jnp.arange(7.0)).block_until_ready()
print(len(hits))
"""


def _child_hits(folder: str, env: dict) -> int:
  result = subprocess.run([sys.executable, "-c", _CHILD, folder], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=120, check=True)
  return int(result.stdout.split()[-1])


def test_a_local_folder_is_written_by_one_process_and_read_by_the_next(tmp_path):
  env = dict(os.environ, XLA_FLAGS=CHILD_XLA_FLAGS, TF_CPP_MIN_LOG_LEVEL="3")
  folder = str(tmp_path / "xla")
  assert _child_hits(folder, env) == 0
  assert _child_hits(folder, env) > 0


def test_a_bucket_folder_is_written_by_one_process_and_read_by_the_next():
  with running_emulator("bucket") as gcs:
    env = {**os.environ, **gcs.env(), "XLA_FLAGS": CHILD_XLA_FLAGS, "TF_CPP_MIN_LOG_LEVEL": "3"}
    assert _child_hits("gs://bucket/xla", env) == 0
    assert [n for n in gcs.names() if n.startswith("xla/") and n.endswith("-cache")]
    assert _child_hits("gs://bucket/xla", env) > 0
