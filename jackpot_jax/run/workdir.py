"""The run directory: its saved config, and the rule for which config changes may resume.

A workdir belongs to one experiment. `search` (or `baselines`) on a workdir saved with a
different config is refused (unless --force), except for fields that only change how the
run executes.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import jax
import ml_collections

from jackpot_jax import config_defaults, config_files, fileio

CONFIG_FILE = "config.json"
# Fields that change how a run executes, not what it computes: a run may resume with
# other values (e.g. a checkpoint written on 8 devices resumes on 1).
RUNTIME_FIELDS = ("mesh", "checkpoint", "progress_bar", "log_every_steps", "profile_steps",
                  "eval.batch_size", "eval.perplexity_batch_size", "baselines.batch_size",
                  "data.prefetch", "data.workers", "compilation_cache_dir",
                  "data.token_cache_dir")
# What `evaluate` and `export` may change in a finished run's config: how it runs, and
# where its data lives (a dataset copied to another disk or machine).
REEVALUATION_FIELDS = ("eval.batch_size", "eval.perplexity_batch_size", "data.data_dir",
                       "data.prefetch", "data.workers", "mesh", "progress_bar",
                       "compilation_cache_dir", "data.token_cache_dir")


def config_to_json(config: ml_collections.ConfigDict) -> dict:
  return json.loads(config.to_json_best_effort())


def _with_defaults(saved: dict, defaults: dict | None = None) -> dict:
  """A saved config with the fields added since it was written filled in from their
  defaults, so a workdir from an older version still resumes, evaluates and exports."""
  defaults = config_to_json(config_defaults.base_config()) if defaults is None else defaults
  merged = dict(saved)
  for key, value in defaults.items():
    if key not in merged:
      merged[key] = value
    elif isinstance(value, dict) and isinstance(merged[key], dict):
      merged[key] = _with_defaults(merged[key], value)
  return merged


def prepare_workdir(config: ml_collections.ConfigDict, workdir: str | os.PathLike,
                    force: bool = False) -> Path:
  """Creates the workdir and refuses to mix runs of different configs (`config`, the
  resolved one a run saves) in it.

  It only checks: `save_workdir_config` records the config once the run's inputs have
  loaded, so a run that stops on bad input leaves no config behind to refuse the fix.
  """
  workdir = fileio.as_path(workdir, "--workdir")
  if fileio.is_cloud(workdir):  # a bucket has no folders to create; one probe write
    fileio.check_reachable(workdir, "--workdir", writable=True)
  else:
    try:
      workdir.mkdir(parents=True, exist_ok=True)
    except OSError as error:
      raise ValueError(f"cannot create workdir {workdir}: {error.strerror}") from error
    try:  # a real write: permission bits say nothing about read-only mounts or root
      tempfile.TemporaryFile(dir=workdir).close()
    except OSError as error:
      raise ValueError(f"workdir {workdir} is not writable ({error.strerror}); choose "
                       "another --workdir") from error
  saved = workdir / CONFIG_FILE
  if saved.exists() and not force:
    try:
      previous = _with_defaults(json.loads(saved.read_text()))
    except ValueError as error:
      raise ValueError(f"{saved} is not valid JSON ({error}); restore it, or pass --force "
                       "to replace it") from error
    changed = sorted(k for k in _diff_keys(previous, config_to_json(config))
                     if not config_files.within(k, RUNTIME_FIELDS))
    if changed:
      raise ValueError(f"workdir {workdir} holds a run with a different config (changed: "
                       f"{', '.join(changed[:5])}); use a new --workdir or pass --force")
  return workdir


def save_workdir_config(config: ml_collections.ConfigDict, workdir: Path) -> None:
  if jax.process_index() == 0:
    fileio.write_json(workdir / CONFIG_FILE, config_to_json(config))


def _diff_keys(a: Any, b: Any, prefix: str = "") -> list[str]:
  if isinstance(a, dict) and isinstance(b, dict):
    keys = set(a) | set(b)
    return [k for key in keys for k in _diff_keys(a.get(key), b.get(key), f"{prefix}{key}.")]
  return [] if a == b else [prefix.rstrip(".")]


def load_workdir_config(workdir: str | os.PathLike,
                        overrides: dict | None = None) -> ml_collections.ConfigDict:
  """The config a workdir's run was made with; `overrides` may change the fields of
  REEVALUATION_FIELDS (how `evaluate` and `export` run and where the data lives)."""
  workdir = fileio.as_path(workdir, "--workdir")
  fileio.check_reachable(workdir, "--workdir")
  path = workdir / CONFIG_FILE
  if not path.exists():
    raise ValueError(f"{workdir} holds no {CONFIG_FILE}; run `search` with this --workdir first")
  config = ml_collections.ConfigDict(_with_defaults(json.loads(path.read_text())))
  return config_files.apply_overrides(config, overrides or {}, f"the config of {workdir}",
                                      allowed=REEVALUATION_FIELDS)
