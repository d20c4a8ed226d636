"""Command line: `python -m jackpot_jax {search,evaluate,export,apply-masks}` and `jackpot`.

  search    --config=configs/<name>.py --workdir=DIR [--config.a.b=value ...] [--force]
  evaluate  --workdir=DIR
  export    --workdir=DIR --output=FILE [--format=state_dict|prune|masks] [--clean_keys]
  apply-masks --config=configs/<name>.py --masks=FILE --output=FILE

Bad input ends with one line on stderr naming the problem, and exit status 2.
"""

from __future__ import annotations

import json
import logging
import os
import sys

from absl import app, flags, logging as absl_logging
from ml_collections import config_flags

COMMANDS = ("search", "evaluate", "export", "apply-masks")

FLAGS = flags.FLAGS
config_flags.DEFINE_config_file("config", None, "configs/<name>.py", lock_config=True)
flags.DEFINE_string("workdir", None, "run directory: checkpoints, reports, TensorBoard logs")
flags.DEFINE_string("output", None, "export: file to write")
flags.DEFINE_enum("format", "state_dict", ["state_dict", "prune", "masks"], "export format")
flags.DEFINE_bool("clean_keys", False, "export: plain keys instead of the source's wrapper/prefix")
flags.DEFINE_string("masks", None, "apply-masks: a masks file written by `export --format=masks`")
flags.DEFINE_bool("force", False, "search: reuse a workdir whose saved config differs")
flags.DEFINE_bool("distributed", False, "initialise jax.distributed (TPU pods, SLURM, or the "
                  "explicit coordinator flags below) before anything touches a device")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for hand launches")
flags.DEFINE_integer("num_processes", None, "number of processes, with --coordinator_address")
flags.DEFINE_integer("process_id", None, "this process's index, with --coordinator_address")


class UsageError(ValueError):
  """Wrong command-line usage."""


def _require(name: str) -> str:
  value = getattr(FLAGS, name)
  if not value:
    raise UsageError(f"--{name} is required for this command")
  return value


def _run_command(command: str) -> None:
  # Imported here so `--help` and usage errors stay fast.
  from jackpot_jax import train, export as export_lib
  if command == "search":
    if FLAGS.config is None:
      raise UsageError("--config is required for search, e.g. --config=configs/default.py")
    report = train.search_and_evaluate(FLAGS.config, _require("workdir"), force=FLAGS.force)
    _print_summary(report)
  elif command == "evaluate":
    _print_summary(train.evaluate_workdir(_require("workdir")))
  elif command == "export":
    path = export_lib.export_workdir(_require("workdir"), _require("output"), FLAGS.format,
                                     clean_keys=FLAGS.clean_keys)
    print(f"wrote {path}")
  else:
    if FLAGS.config is None:
      raise UsageError("--config is required for apply-masks; it names the checkpoint")
    path = export_lib.apply_masks(FLAGS.config, _require("masks"), _require("output"))
    print(f"wrote {path}")


def _print_summary(report: dict) -> None:
  accuracy = report["accuracy"]
  print(json.dumps({"dense": accuracy["dense"], "magnitude": accuracy["magnitude"],
                    "jackpot": accuracy["jackpot"], "tuned": accuracy.get("tuned"),
                    "conv_sparsity": report["sparsity"]["conv"],
                    "wall_seconds": report["search"]["wall_seconds"]}))


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:
    print(f"usage: jackpot {{{','.join(COMMANDS)}}} --workdir=DIR [flags]", file=sys.stderr)
    sys.exit(2)
  os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
  if not FLAGS["verbosity"].present:
    # app.run turns INFO on, and Orbax logs every save at INFO: that would bury the
    # progress bar, the warnings and the one-line errors. --verbosity=0 shows it.
    absl_logging.set_verbosity(absl_logging.WARNING)
  from jackpot_jax import errors, parallel
  if FLAGS.distributed or FLAGS.coordinator_address:
    parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                    FLAGS.process_id)
  try:
    _run_command(argv[1])
  except errors.USER_ERRORS as error:
    _fail(str(error))
  except OSError as error:
    if not errors.is_disk_full(error):
      raise
    detail = "" if error.strerror == os.strerror(error.errno) else f" ({error.strerror})"
    _fail(f"no space left on the device while writing {error.filename or 'the output'}"
          f"{detail}; free space or choose another --workdir/--output and rerun: complete "
          "checkpoints and files are kept")


def _fail(message: str) -> None:
  print(f"jackpot: error: {' '.join(message.split())}", file=sys.stderr)
  sys.exit(2)


def _flags_parser(argv: list[str]) -> list[str]:
  try:
    return FLAGS(argv)
  except flags.Error as error:
    _fail(str(error))


def run() -> None:
  """Console-script entry point."""
  logging.getLogger("absl").setLevel(logging.WARNING)
  app.run(main, flags_parser=_flags_parser)
