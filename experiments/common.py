"""Shared pieces of the experiment scripts: runs in sub-workdirs, machine line, plots."""

from __future__ import annotations

import platform
from pathlib import Path

import jax
import ml_collections

from jackpot_jax import fileio, train


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
