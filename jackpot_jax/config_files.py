"""Config files outside the command line: `get_config()` of a configs/*.py file plus
dotted-key overrides, as `--config=FILE --config.a.b=value` would build it.

A config is a file or a shipped config's name: `default`, `vit_fashion_mnist`,
`paper/resnet50_imagenet_s90_e30` (the repository's configs/, which an installed package
carries as jackpot_jax/configs), so `--config=default` works from any directory.

Tests and notebooks load configs through this, so they see exactly what
`python -m jackpot_jax search --config=FILE` sees; `evaluate` and `export` apply their
`--config.a.b=value` overrides to a workdir's saved config with `apply_overrides`.
"""

from __future__ import annotations

import ast
import difflib
import importlib.util
import os
from pathlib import Path
from typing import Any, Mapping

import ml_collections

from jackpot_jax import errors


def shipped_configs_dir() -> Path:
  """The shipped configs: jackpot_jax/configs in an installed wheel, the repository's
  configs/ in a checkout (an editable install included)."""
  package = Path(__file__).resolve().parent
  installed = package / "configs"
  return installed if installed.is_dir() else package.parent / "configs"


def shipped_config_names() -> list[str]:
  """["default", "paper/resnet50_imagenet_s90_e30", ...]: what `--config=NAME` accepts."""
  root = shipped_configs_dir()
  return sorted(path.relative_to(root).with_suffix("").as_posix()
                for path in root.rglob("*.py") if path.name != "__init__.py")


def config_path(config: str | os.PathLike) -> str:
  """The file `--config=config` means: a shipped config's file for a NAME (no .py, no
  such file), else `config` as given."""
  config = os.fspath(config)
  if ".py" in config or os.path.isfile(config):  # ".py": also `file.py:argument`
    return config
  names = shipped_config_names()
  if config in names:
    return str(shipped_configs_dir() / f"{config}.py")
  close = difflib.get_close_matches(config, names, n=1)
  hint = f"did you mean {close[0]!r}? " if close else ""
  raise ValueError(f"config {config!r} is neither a file nor a shipped config; {hint}"
                   f"pass a .py file or one of: {', '.join(names)}")


def load_config(path: str | os.PathLike,
                overrides: Mapping[str, Any] | None = None) -> ml_collections.ConfigDict:
  """`get_config()` of the file at `path` (or of the shipped config it names), with
  {"search.sparsity": 0.95, ...} applied."""
  path = config_path(path)
  if not os.path.isfile(path):
    raise ValueError(f"config file {path} does not exist; pass a configs/<name>.py file")
  spec = importlib.util.spec_from_file_location("jackpot_config_file", path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return apply_overrides(module.get_config(), overrides or {}, f"the overrides of {path}")


def within(key: str, fields: tuple[str, ...]) -> bool:
  """Whether dotted `key` is one of `fields` or lies inside one of them (a section)."""
  return any(key == field or key.startswith(field + ".") for field in fields)


def apply_overrides(config: ml_collections.ConfigDict, overrides: Mapping[str, Any],
                    where: str, allowed: tuple[str, ...] | None = None) -> ml_collections.ConfigDict:
  """`config` with {"search.sparsity": 0.95, ...} applied in place; a key that names no
  field, or (with `allowed`) none of the fields or sections listed there, is refused."""
  for key, value in overrides.items():
    *parents, leaf = key.split(".")
    section = config
    for parent in parents:
      section = section.get(parent) if isinstance(section, ml_collections.ConfigDict) else None
    if not isinstance(section, ml_collections.ConfigDict) or leaf not in section:
      raise ValueError(f"unknown config field {key!r} in {where}"
                       f"{errors.did_you_mean(key, dotted_keys(config))}")
    if allowed is not None and not within(key, allowed):
      raise ValueError(f"{key} cannot be changed in {where}; these can: {', '.join(allowed)}")
    section[leaf] = value
  return config


def dotted_keys(config: ml_collections.ConfigDict, prefix: str = "") -> list[str]:
  """Every field of `config` (and of its sections) as a dotted key."""
  keys = []
  for name, value in config.items():
    keys.append(prefix + name)
    if isinstance(value, ml_collections.ConfigDict):
      keys.extend(dotted_keys(value, f"{prefix}{name}."))
  return keys


def parse_overrides(pairs: list[str]) -> dict[str, Any]:
  """["search.sparsity=0.95", "data.name=npz:/x.npz"] -> {key: value}; values that read
  as Python literals become them, anything else stays a string."""
  overrides = {}
  for pair in pairs:
    key, separator, text = pair.partition("=")
    if not separator:
      raise ValueError(f"override {pair!r} is not key=value, e.g. search.sparsity=0.95")
    try:
      overrides[key] = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      overrides[key] = text
  return overrides
