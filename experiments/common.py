"""Shared pieces of the experiment scripts: config loading, runs in sub-workdirs, plots."""

from __future__ import annotations

import importlib.util
import platform
from pathlib import Path

import jax
import ml_collections

from jackpot_jax import fileio, train


def load_config(path: str, overrides: dict) -> ml_collections.ConfigDict:
  """`get_config()` of a config file with dotted-key overrides applied."""
  spec = importlib.util.spec_from_file_location("experiment_config", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  config = module.get_config()
  for key, value in overrides.items():
    section = config
    *parents, leaf = key.split(".")
    for parent in parents:
      section = section[parent]
    section[leaf] = value
  return config


def parse_overrides(pairs: list[str]) -> dict:
  """["search.sparsity=0.95", "data.name=npz:/x.npz"] -> {key: value} with literal values."""
  import ast
  overrides = {}
  for pair in pairs:
    key, _, text = pair.partition("=")
    try:
      overrides[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key] = text
  return overrides


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
