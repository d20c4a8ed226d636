"""The one way a program of this project starts: the `jackpot` command, the experiments, the
benchmarks and the data preparation all run their `main` through `run`.

  entrypoint.define_config_flag()
  ...
  entrypoint.run(main, default_config=entrypoint.DEFAULT_CONFIG)
  # python script.py [--config=FILE] [--config.a.b=value ...], as the CLI takes them

Bad flags and bad input end in one line on stderr with exit status 2 (`errors`).
"""

from __future__ import annotations

import logging
import os
import sys
from pathlib import Path
from typing import Callable

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

from jackpot_jax import config_files, errors

DEFAULT_CONFIG = config_files.config_path("default")
_CONFIG = "--config"


def define_config_flag() -> flags.FlagHolder:
  """`--config=configs/<name>.py` (or a shipped config's name, `parse_flags` resolves it)
  with `--config.a.b=value` overrides of any field."""
  return config_flags.DEFINE_config_file(
      "config", None, "configs/<name>.py, or a shipped config's name (default, "
      "vit_fashion_mnist, llm_tiny, paper/resnet50_imagenet_s90_e30, ...)", lock_config=True)


def program_name() -> str:
  """What the error line starts with: `jackpot`, a module run with -m, or a script."""
  path = Path(sys.argv[0]).resolve()
  package = Path(__file__).resolve().parent
  if path.name in ("__main__.py", "jackpot", "cli.py") or path == package / "cli.py":
    return "jackpot"
  if package in path.parents:
    return ".".join(("jackpot_jax",) + path.relative_to(package).with_suffix("").parts)
  return path.name


def split_overrides(argv: list[str]) -> tuple[list[str], dict]:
  """(argv without its --config.a.b=value flags, {a.b: value}) for the commands that
  apply overrides to a saved config instead of a config file."""
  pairs = [a[len(_CONFIG) + 1:] for a in argv if a.startswith(_CONFIG + ".")]
  return ([a for a in argv if not a.startswith(_CONFIG + ".")],
          config_files.parse_overrides(pairs))


def _unknown_override(argv: list[str]) -> str | None:
  """Which --config.a.b flag names no field of the config file, said in one line."""
  files = [a.split("=", 1)[1] for a in argv if a.startswith(_CONFIG + "=")]
  _, overrides = split_overrides(argv)
  try:
    config_files.load_config(files[-1], overrides)
  except ValueError as error:
    return str(error)
  return None


def parse_flags(argv: list[str], default_config: str | None = None,
                workdir_overrides: bool = False) -> list[str]:
  """absl's flag parsing with `--config=default_config` when no --config is given; bad
  flags end in one line with exit status 2. With `workdir_overrides` the --config.a.b
  flags are left to `split_overrides(sys.argv)` (a workdir's saved config takes them)."""
  if workdir_overrides:
    with errors.exit_on_user_error(program_name()):
      argv = split_overrides(argv)[0]
  if default_config and not any(a == _CONFIG or a.startswith(_CONFIG + "=") for a in argv):
    argv = [argv[0], f"{_CONFIG}={default_config}", *argv[1:]]
  with errors.exit_on_user_error(program_name()):
    argv = _config_names_resolved(argv)
  try:
    remaining = flags.FLAGS(argv)
  except flags.Error as error:
    errors.fail(program_name(), str(error))
  except (AttributeError, KeyError) as error:  # config_flags: an override names no field
    errors.fail(program_name(), _unknown_override(argv) or errors.one_line(error))
  _check_implied_by_pattern(argv)
  return remaining


def _config_names_resolved(argv: list[str]) -> list[str]:
  """argv with `--config=NAME` (or `--config NAME`) of a shipped config made
  `--config=FILE`, the one form the checks here read."""
  resolved, rest = [], iter(argv)
  for arg in rest:
    if arg == _CONFIG:
      value = next(rest, None)
      arg = _CONFIG if value is None else f"{_CONFIG}={value}"
    if arg.startswith(_CONFIG + "="):
      arg = f"{_CONFIG}={config_files.config_path(arg[len(_CONFIG) + 1:])}"
    resolved.append(arg)
  return resolved


# What an N:M search.pattern implies, so the command line may not also give it.
_IMPLIED_BY_PATTERN = ("search.sparsity", "search.sparsity_plan", "search.layer_overrides")


def _check_implied_by_pattern(argv: list[str]) -> None:
  """An N:M pattern sets every layer's sparsity: a sparsity or plan given beside it on the
  command line would be silently ignored, so it is an error (config files are checked in
  `run/spec.py`, and their search.sparsity does not apply under a pattern)."""
  config = flags.FLAGS["config"].value if "config" in flags.FLAGS else None
  pattern = None if config is None else config.get("search", {}).get("pattern")
  if pattern in (None, "unstructured"):
    return
  from jackpot_jax.search import masking  # pylint: disable=import-outside-toplevel
  try:
    masking.parse_pattern(pattern)
  except ValueError:
    return  # no valid pattern: run/spec.py names that error
  given = [key for key in split_overrides(argv)[1]
           if any(key == k or key.startswith(k + ".") for k in _IMPLIED_BY_PATTERN)]
  if given:
    errors.fail(program_name(), f"--config.{given[0]} was given with search.pattern="
                f"{config.search.pattern}, which implies every layer's sparsity; drop one")


def run(main: Callable[[list[str]], None], *, default_config: str | None = None,
        parse: Callable[[list[str]], list[str]] | None = None) -> None:
  """app.run(main) with Orbax's per-save INFO lines off (--verbosity shows them) and every
  user error as one line with exit status 2. `default_config` is the --config of a
  script run without one; `parse` replaces the flag parsing (the CLI's commands)."""
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  logging.getLogger("absl").setLevel(logging.WARNING)

  def guarded(argv: list[str]) -> None:
    if not flags.FLAGS["verbosity"].present:
      # app.run turns INFO on, and Orbax logs every save at INFO: that would bury the
      # progress bar, the warnings and the one-line errors.
      absl_logging.set_verbosity(absl_logging.WARNING)
    # Every program of ours (commands, experiments, benchmarks) writes the compilation
    # cache's entries whole: several processes may share its folder.
    from jackpot_jax.run import compilation_cache  # pylint: disable=import-outside-toplevel
    compilation_cache.write_entries_atomically()
    with errors.exit_on_user_error(program_name()):
      main(argv)

  app.run(guarded, flags_parser=parse or (lambda argv: parse_flags(argv, default_config)))
