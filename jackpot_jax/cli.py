"""Command line: `python -m jackpot_jax {search,evaluate,export,apply-masks,baselines}` and
`jackpot`.
`jackpot --help` and `jackpot COMMAND --help` print what each takes (`cli_help`).

  search    --config=configs/<name>.py --workdir=DIR [--config.a.b=value ...] [--force]
  evaluate  --workdir=DIR [--config.eval.batch_size=N --config.data.data_dir=DIR ...]
  export    --workdir=DIR --output=FILE [--format=state_dict|prune|masks|hf] [--method=NAME]
            [--clean_keys] [--config.mesh.num_devices=N ...]
  apply-masks --config=configs/<name>.py --masks=FILE --output=FILE
  baselines --config=configs/<name>.py --workdir=DIR [--config.a.b=value ...] [--force]

`evaluate` and `export` read the workdir's saved config; their --config.a.b overrides may
change how they run (workdir.REEVALUATION_FIELDS), not what was searched. Bad input ends
with one line on stderr naming the problem, and exit status 2.
"""

from __future__ import annotations

import sys

from absl import flags

from jackpot_jax import entrypoint, errors

COMMANDS = ("search", "evaluate", "export", "apply-masks", "baselines")
# Commands that take --config.a.b=value overrides of a workdir's saved config.
_WORKDIR_COMMANDS = ("evaluate", "export")

FLAGS = flags.FLAGS
entrypoint.define_config_flag()
flags.DEFINE_string("workdir", None, "run directory: checkpoints, reports, TensorBoard logs")
flags.DEFINE_string("output", None, "export: file to write")
flags.DEFINE_enum("format", "state_dict", ["state_dict", "prune", "masks", "hf"],
                  "export format (hf: a language model's Hugging Face folder)")
flags.DEFINE_string("method", None, "export --format=hf: whose masks (a baseline the "
                    "workdir keeps, e.g. sparsegpt; a search workdir's default: jackpot)")
flags.DEFINE_bool("clean_keys", False, "export: plain keys instead of the source's wrapper/prefix")
flags.DEFINE_string("masks", None, "apply-masks: a masks file written by `export --format=masks`")
flags.DEFINE_bool("force", False, "search, baselines: reuse a workdir whose saved config "
                  "differs")
flags.DEFINE_bool("distributed", False, "initialise jax.distributed (TPU pods, SLURM, or the "
                  "explicit coordinator flags below) before anything touches a device")
flags.DEFINE_string("coordinator_address", None, "host:port of process 0, for hand launches")
flags.DEFINE_integer("num_processes", None, "number of processes, with --coordinator_address")
flags.DEFINE_integer("process_id", None, "this process's index, with --coordinator_address")


def _require(name: str) -> str:
  value = getattr(FLAGS, name)
  if not value:
    raise ValueError(f"--{name} is required for this command")
  return value


def _workdir_overrides() -> dict:
  """evaluate/export: the --config.a.b=value flags of the command line."""
  return entrypoint.split_overrides(sys.argv)[1]


def _run_command(command: str) -> None:
  # Imported here so `--help` and usage errors stay fast.
  from jackpot_jax.run import job, lm_baselines, lm_report, workdir_export
  if command == "search":
    if FLAGS.config is None:
      raise ValueError("--config is required for search, e.g. --config=configs/default.py")
    report = job.search_and_evaluate(FLAGS.config, _require("workdir"), force=FLAGS.force)
    print(summary_line(report, FLAGS.workdir))
  elif command == "baselines":
    if FLAGS.config is None:
      raise ValueError("--config is required for baselines, e.g. --config=llm_tiny")
    report = lm_baselines.run_baselines(FLAGS.config, _require("workdir"), force=FLAGS.force)
    print(lm_report.summary_line(report, FLAGS.workdir))
  elif command == "evaluate":
    report = job.evaluate_workdir(_require("workdir"), _workdir_overrides())
    print(summary_line(report, FLAGS.workdir))
  elif command == "export":
    path = workdir_export.export_workdir(_require("workdir"), _require("output"), FLAGS.format,
                                         clean_keys=FLAGS.clean_keys,
                                         overrides=_workdir_overrides(), method=FLAGS.method)
    print(f"wrote {path}")
  else:
    if FLAGS.config is None:
      raise ValueError("--config is required for apply-masks; it names the checkpoint")
    path = workdir_export.apply_masks(FLAGS.config, _require("masks"), _require("output"))
    print(f"wrote {path}")


def _pct(fraction: float | None) -> str:
  return "-" if fraction is None else f"{100 * fraction:.2f}%"


def summary_line(report: dict, workdir: str) -> str:
  """The last line a search or evaluate prints: the figures a person reads first (the
  jackpot against dense and the magnitude baselines, at the sparsity counted from the
  masks; a language model's perplexities); report.json beside it is the machine-readable
  whole."""
  if "perplexity" in report:
    from jackpot_jax.run import lm_report  # pylint: disable=import-outside-toplevel
    return lm_report.summary_line(report, workdir)
  accuracy, counted = report["accuracy"], report["sparsity"]
  which = "linear" if counted.get("conv", 0) == 0 and counted.get("linear") else "conv"
  parts = [f"jackpot {_pct(accuracy['jackpot'])} top-1 at {100 * counted[which]:.1f}% "
           f"{which} sparsity", f"dense {_pct(accuracy['dense'])}",
           f"magnitude {_pct(accuracy['magnitude'])}"]
  if accuracy.get("magnitude_recalibrated") is not None:
    parts.append(f"magnitude with BN re-estimated {_pct(accuracy['magnitude_recalibrated'])}")
  if accuracy.get("tuned") is not None:
    parts.append(f"tuned {_pct(accuracy['tuned'])}")
  return f"{parts[0]} ({', '.join(parts[1:])}); report: {workdir}/report.json"


def _usage_error() -> None:
  errors.fail("jackpot", f"usage: jackpot {{{','.join(COMMANDS)}}} --workdir=DIR [flags] "
              "(jackpot --help)")


def _check_command(command: str | None) -> None:
  """A known command: else one line (with the closest command) and exit status 2."""
  if command is None or command.startswith("-"):
    _usage_error()
  if command not in COMMANDS:
    errors.fail("jackpot", f"unknown command {command!r}{errors.did_you_mean(command, COMMANDS)}"
                f"; commands: {', '.join(COMMANDS)} (jackpot --help)")


def main(argv: list[str]) -> None:
  if len(argv) != 2 or argv[1] not in COMMANDS:  # what absl leaves: the command alone
    _usage_error()
  with errors.exit_on_user_error("jackpot"):
    from jackpot_jax.run import parallel  # pylint: disable=import-outside-toplevel
    if FLAGS.distributed or FLAGS.coordinator_address:
      parallel.initialize_distributed(FLAGS.coordinator_address, FLAGS.num_processes,
                                      FLAGS.process_id)
    _run_command(argv[1])


_HELP = ("--help", "-h", "--helpshort", "-?")


def _print_help(argv: list[str]) -> None:
  """`jackpot [COMMAND] --help` (or `jackpot help [COMMAND]`) on stdout, exit status 0."""
  from jackpot_jax import cli_help, config_files  # pylint: disable=import-outside-toplevel
  words = argv[2:3] if argv[1:2] == ["help"] else argv[1:2]
  command = words[0] if words and not words[0].startswith("-") else None
  files = [a.split("=", 1)[1] for a in argv if a.startswith("--config=")]
  with errors.exit_on_user_error("jackpot"):
    if command is not None:
      _check_command(command)
    shipped = cli_help.HELP_CONFIGS.get(command)
    default = entrypoint.DEFAULT_CONFIG if shipped is None else shipped
    config = config_files.load_config(files[-1] if files else default)
    if command is None:
      print(cli_help.overview(config))
    else:
      name = files[-1] if files else (
          "the built-in default config" if shipped is None else f"the shipped {shipped} config")
      print(cli_help.command_help(command, config, every_field=bool(files), config_name=name))
  sys.exit(0)


def _flags_parser(argv: list[str]) -> list[str]:
  if any(a in _HELP for a in argv[1:]) or argv[1:2] == ["help"]:
    _print_help(argv)
  _check_command(argv[1] if len(argv) > 1 else None)
  workdir_command = argv[1] in _WORKDIR_COMMANDS
  return entrypoint.parse_flags(argv, workdir_overrides=workdir_command)


def run() -> None:
  """Console-script entry point."""
  entrypoint.run(main, parse=_flags_parser)
