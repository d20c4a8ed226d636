"""Shared pieces of the experiment scripts: entry point, runs in sub-workdirs, plots."""

from __future__ import annotations

import platform
import sys
from pathlib import Path
from typing import Callable

import jax
import ml_collections
from absl import app, logging

from jackpot_jax import errors, fileio, train


def main(entry: Callable[[list[str]], None]) -> None:
  """app.run(entry) as the `jackpot` command runs: Orbax's per-save INFO lines off, and
  bad input (a missing checkpoint, an unknown config field) as one line with exit 2."""
  def guarded(argv):
    logging.set_verbosity(logging.WARNING)
    try:
      entry(argv)
    except errors.USER_ERRORS as error:
      print(f"{Path(sys.argv[0]).name}: error: {' '.join(str(error).split())}", file=sys.stderr)
      sys.exit(2)
  app.run(guarded)


def run(config: ml_collections.ConfigDict, workdir: Path) -> dict:
  """A search (resumed if the sub-workdir already holds one) and its report."""
  return train.search_and_evaluate(config, workdir)


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
