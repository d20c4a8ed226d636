"""What `jackpot --help` and `jackpot <command> --help` print.

absl's own `--help` prints only its usage line and exits 1, and `--helpfull` lists absl's
flags; users want the commands, the flags a command takes, the config fields they will
most likely change (with their defaults and docs) and an example. `--helpfull` still
prints absl's full list.
"""

from __future__ import annotations

import importlib
import textwrap
from typing import Any

import ml_collections
from absl import flags

from jackpot_jax import config_defaults

# One line per command, and the absl flags each one reads.
COMMANDS = {
    "search": ("search a jackpot mask over a pre-trained checkpoint's frozen weights, "
               "evaluate it against dense and the baselines, write report.json",
               ("config", "workdir", "force", "distributed", "coordinator_address",
                "num_processes", "process_id")),
    "evaluate": ("re-evaluate a workdir's latest jackpot and rewrite its reports "
                 "(--config.a.b overrides change how it runs, not what was searched)",
                 ("workdir",)),
    "export": ("write the jackpot (W * M, re-estimated BN statistics) back to PyTorch: a "
               "state_dict in the checkpoint's own key layout, torch.nn.utils.prune's "
               "layout, or the masks alone; a language model's baseline masks (--method) as a "
               "Hugging Face folder (--format=hf)",
               ("workdir", "output", "format", "method", "clean_keys")),
    "apply-masks": ("apply a masks file (export --format=masks) to a checkpoint",
                    ("config", "masks", "output")),
    "baselines": ("language models: perplexity of a decoder dense and under the one-shot "
                  "baselines (magnitude, Wanda, SparseGPT with and without its weight update) "
                  "at search.pattern or search.sparsity, written to report.json",
                  ("config", "workdir", "force")),
}

EXAMPLES = {
    "search": "jackpot search --config=configs/default.py --workdir=workdirs/default \\\n"
              "    --config.search.sparsity=0.95 --config.search.num_epochs=1",
    "evaluate": "jackpot evaluate --workdir=workdirs/default --config.eval.batch_size=250",
    "export": "jackpot export --workdir=workdirs/default --output=jackpot.pth\n"
              "jackpot export --workdir=workdirs/llm_tiny_24 --format=hf --method=sparsegpt "
              "--output=llm_tiny_24_sparsegpt",
    "apply-masks": "jackpot apply-masks --config=configs/default.py --masks=masks.safetensors "
                   "--output=pruned.pth",
    "baselines": "jackpot baselines --config=llm_tiny --workdir=workdirs/llm_tiny_24\n"
                 "jackpot baselines --config=llm_tiny --workdir=workdirs/llm_tiny_50 \\\n"
                 "    --config.search.pattern=unstructured --config.search.sparsity=0.5",
}

# The config a command's --help shows without --config, where it is not the default.
HELP_CONFIGS = {"baselines": "llm_tiny"}

# The fields most runs change, shown by `jackpot --help` and `jackpot search --help`.
COMMON_FIELDS = (
    "model.name", "model.checkpoint", "model.num_classes", "data.name", "search.sparsity",
    "search.pattern", "search.sparsity_plan", "search.num_epochs", "search.batch_size",
    "search.learning_rate", "search.score_init", "search.distill_weight", "tune.num_epochs",
    "eval.every_epochs", "mesh.num_devices",
)
# The fields `jackpot baselines --help` shows.
BASELINES_FIELDS = (
    "model.checkpoint", "data.name", "data.seq_len", "data.tokenizer", "search.pattern",
    "search.sparsity", "baselines.methods", "baselines.calibration_sequences",
    "baselines.seed", "baselines.batch_size", "eval.perplexity_batch_size", "mesh.num_devices",
)

# Fields whose values are registered names: the module and function listing them. Imported
# only when such a field is shown, as they load JAX; the names include those registered by
# a module the config file imports.
REGISTERED_NAMES = {
    "search.score_init": ("jackpot_jax.search.scores", "score_init_names"),
    "search.sparsity_plan": ("jackpot_jax.search.sparsity", "plan_names"),
    "data.augment": ("jackpot_jax.data.transforms", "augmentation_names"),
    "baselines.methods": ("jackpot_jax.baselines.llm_oneshot", "llm_baseline_names"),
}

_WIDTH = 100


def _value(config: ml_collections.ConfigDict, key: str) -> Any:
  value = config
  for part in key.split("."):
    value = value[part]
  return dict(value) if isinstance(value, ml_collections.ConfigDict) else value


def config_keys(config: ml_collections.ConfigDict) -> list[str]:
  """Every field of `config` as a dotted key: the declared ones in declaration order, then
  any the config file adds; a dict-valued field (model.kwargs) counts as one."""
  declared = [key for key, _, _ in config_defaults.FIELDS]

  def leaves(section: ml_collections.ConfigDict, prefix: str) -> list[str]:
    keys = []
    for name, value in section.items():
      key = prefix + name
      nested = isinstance(value, ml_collections.ConfigDict) and key not in declared
      keys.extend(leaves(value, key + ".") if nested else [key])
    return keys

  present = leaves(config, "")
  return [k for k in declared if k in present] + [k for k in present if k not in declared]


def _registered(key: str) -> str:
  """"; registered: a | b" for a field whose values are registered names, else ""."""
  if key not in REGISTERED_NAMES:
    return ""
  module, function = REGISTERED_NAMES[key]
  return f"; registered: {' | '.join(getattr(importlib.import_module(module), function)())}"


def _field_lines(config: ml_collections.ConfigDict, keys: list[str] | tuple[str, ...]) -> list[str]:
  lines = []
  for key in keys:
    doc = config_defaults.DOCS.get(key, "") + _registered(key)
    lines.append(f"  --config.{key}={_value(config, key)!r}")
    if doc:
      lines += textwrap.wrap(doc, _WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
  return lines


def _flag_lines(names: tuple[str, ...]) -> list[str]:
  lines = []
  for name in names:
    flag = flags.FLAGS[name]
    default = "" if flag.default in (None, False) or name == "config" else f" (default {flag.default})"
    shown = "--config=FILE|NAME" if name == "config" else f"--{name}"
    lines.append(f"  {shown}{default}")
    lines += textwrap.wrap(flag.help, _WIDTH, initial_indent=" " * 6, subsequent_indent=" " * 6)
  return lines


def overview(config: ml_collections.ConfigDict) -> str:
  """`jackpot --help`: the commands, the most-used fields of `config`, an example."""
  lines = ["usage: jackpot COMMAND [flags] [--config.a.b=value ...]", "",
           "Search a sparse mask over a pre-trained network's frozen weights (Lottery "
           "Jackpots).", "", "commands:"]
  for name, (doc, _) in COMMANDS.items():
    lines += textwrap.wrap(f"{name:<12} {doc}", _WIDTH, initial_indent="  ",
                           subsequent_indent=" " * 15)
  lines += ["", "most-used config fields (the built-in default config's values):"]
  lines += _field_lines(config, COMMON_FIELDS)
  lines += ["", "example:", "  " + EXAMPLES["search"].replace("\n", "\n  "), "",
            "`jackpot COMMAND --help` shows a command's flags; `jackpot search --help "
            "--config=FILE` lists every field of that config with its value and doc."]
  return "\n".join(lines)


def command_help(command: str, config: ml_collections.ConfigDict, every_field: bool,
                 config_name: str) -> str:
  """`jackpot COMMAND --help`: what it does, its flags, config fields, an example."""
  doc, flag_names = COMMANDS[command]
  lines = [f"usage: jackpot {command} [flags] [--config.a.b=value ...]", ""]
  lines += textwrap.wrap(doc, _WIDTH) + ["", "flags:"] + _flag_lines(flag_names)
  if command in ("search", "evaluate", "baselines"):
    common = BASELINES_FIELDS if command == "baselines" else COMMON_FIELDS
    keys = config_keys(config) if every_field else common
    which = "every config field" if every_field else "the most-used config fields"
    lines += ["", f"{which} of {config_name} (override any with --config.a.b=value):"]
    lines += _field_lines(config, keys)
    if not every_field:
      lines += ["  ... `--config=FILE` beside --help lists every field of that config."]
  lines += ["", "example:", "  " + EXAMPLES[command].replace("\n", "\n  ")]
  return "\n".join(lines)
