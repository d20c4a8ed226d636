"""Shared pieces of the experiment scripts: the config flag, runs in sub-workdirs, plots.

Every script takes `--config=configs/<name>.py` (default: configs/default.py) and
`--config.a.b=value` overrides exactly as `python -m jackpot_jax search` does.
"""

from __future__ import annotations

import copy
import json
import platform
from pathlib import Path
from typing import Any, Callable

import jax
import ml_collections
from absl import flags
from ml_collections import config_flags

from jackpot_jax import config_files, entrypoint, fileio
from jackpot_jax.run import spec as spec_lib, job, program_memory
from jackpot_jax.run import workdir as workdir_lib

FLAGS = flags.FLAGS
entrypoint.define_config_flag()


def main(entry: Callable[[list[str]], None]) -> None:
  """Runs `entry` as the `jackpot` command runs: --config defaults to configs/default.py,
  Orbax's per-save INFO lines are off, bad input is one line with exit status 2."""
  entrypoint.run(entry, default_config=entrypoint.DEFAULT_CONFIG)


def config_with(overrides: dict[str, Any]) -> ml_collections.ConfigDict:
  """The command line's config with this run's fields, e.g. {"search.sparsity": 0.9}."""
  return config_files.apply_overrides(copy.deepcopy(FLAGS.config), overrides,
                                      "the experiment's settings")


def config_source() -> dict:
  """The --config file and its --config.a.b overrides, for the results' JSON."""
  return {"config": config_flags.get_config_filename(FLAGS["config"]),
          "overrides": {k: repr(v) for k, v in
                        config_flags.get_override_values(FLAGS["config"]).items()}}


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  """A search (resumed if the sub-workdir already holds one) and its report.

  The compiled programs stay for the next search (of the same model, most are the same)
  until the process holds half of `vm.max_map_count`'s memory mappings: an experiment runs
  dozens of searches in one process, and each search's XLA:CPU programs keep thousands of
  mappings that would otherwise reach the limit and segfault a later compile
  (docs/guarantees.md, "Many searches in one process").
  """
  try:
    return job.search_and_evaluate(config, workdir)
  finally:
    program_memory.release_if_crowded()


def finished_report(config: ml_collections.ConfigDict, workdir: Path) -> dict | None:
  """The report of a finished search of `config` in `workdir`, read without evaluating
  again; None when there is none yet. A workdir holding another config's run is refused
  in one line, as `run` would refuse it."""
  report = workdir / "report.json"
  if not report.exists():
    return None
  workdir_lib.prepare_workdir(spec_lib.resolve(config).config, workdir)
  return json.loads(report.read_text())


def selected_cell(step: int) -> str:
  """A table cell for the search step the jackpot was selected at (search.selected_on):
  "0 (start)" where the search did not beat the state it started from."""
  return "0 (start)" if step == 0 else str(step)


def pct(fraction: float | None) -> str:
  """A fraction as a percentage with two decimals, "-" for a missing value."""
  return "-" if fraction is None else f"{100 * fraction:.2f}"


def machine() -> str:
  return (f"{platform.machine()} {platform.processor() or ''}".strip()
          + f", {jax.device_count()} {jax.default_backend()} device(s)")


def save_figure(fig, path: Path) -> None:
  with fileio.atomic_path(path) as tmp:
    fig.savefig(tmp, format="png", dpi=110)


def pyplot():
  import matplotlib
  matplotlib.use("Agg")
  import matplotlib.pyplot as plt
  return plt
