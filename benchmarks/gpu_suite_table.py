"""benchmarks/gpu_suite.sh's two helpers: the devices it ran on, and its one JSON and table.

  python benchmarks/gpu_suite_table.py devices --torch_device=cuda
      # prints {"jax": ..., "torch": ...}: the device each framework runs on
  python benchmarks/gpu_suite_table.py collect --out=DIR/gpu_suite.json --devices=FILE \
      --run=f32=FILE --run=bf16=FILE --run=mask_selection=FILE [--failed=NAME=REASON ...] \
      [--log=FILE]
      # each run FILE is that benchmark's stdout, its JSON on the last line; writes the
      # suite's JSON and its table (DIR/gpu_suite.md) and prints the table

The ratios are computed here from the images/s, so the table holds no figure that its own
rows do not explain. `collect` records a run that failed (or printed no JSON) as missing,
still writes and prints the rest, then exits 2 with one line naming what failed: a GPU lease
is short, so one run of the suite should bring back all that worked. Apart from `devices`,
this uses the standard library only.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

# The runs gpu_suite.sh makes, by the name it gives them, and what each is in messages.
RUNS = {"f32": "step_speed float32 (with PyTorch)", "bf16": "step_speed bfloat16",
        "mask_selection": "mask_selection"}
# Table rows: (label, run, step_speed's key).
ROWS = [("jax search f32", "f32", "jax_search"), ("jax dense f32", "f32", "jax_dense"),
        ("jax search bf16", "bf16", "jax_search"), ("jax dense bf16", "bf16", "jax_dense"),
        ("torch reference search f32", "f32", "torch_search"),
        ("torch dense f32", "f32", "torch_dense")]
# Ratios: (key, label, numerator row, denominator row) of images/s. Search over dense is a
# step-time ratio, dense images/s over search images/s: 1.05 means search costs 5% more.
RATIOS = [
    ("jax_search_over_dense_f32", "search/dense step time, jax f32", "jax dense f32",
     "jax search f32"),
    ("jax_search_over_dense_bf16", "search/dense step time, jax bf16", "jax dense bf16",
     "jax search bf16"),
    ("torch_search_over_dense_f32", "search/dense step time, torch f32", "torch dense f32",
     "torch reference search f32"),
    ("jax_over_torch_search_images_per_s_f32", "jackpot_jax/PyTorch images/s, search f32",
     "jax search f32", "torch reference search f32"),
    ("jax_over_torch_dense_images_per_s_f32", "jackpot_jax/PyTorch images/s, dense f32",
     "jax dense f32", "torch dense f32"),
]


def devices(torch_device: str) -> dict:
  """The device JAX uses first and the one PyTorch runs on, as their makers name them."""
  names = {}
  try:
    import jax
    device = jax.devices()[0]
    names["jax"] = f"{device.platform}: {device.device_kind}"
  except Exception as error:  # reported in the table, not fatal: the runs say more
    names["jax"] = f"unavailable ({type(error).__name__}: {error})"
  try:
    import torch
    names["torch"] = (torch.cuda.get_device_name(0) if torch_device.startswith("cuda")
                      else torch_device)
  except Exception as error:
    names["torch"] = f"unavailable ({type(error).__name__}: {error})"
  return names


def last_json_line(path: Path) -> dict:
  """The JSON object a benchmark printed on the last non-empty line of its stdout."""
  lines = [line for line in path.read_text().splitlines() if line.strip()]
  if not lines:
    raise ValueError("printed nothing")
  try:
    value = json.loads(lines[-1])
  except json.JSONDecodeError:
    raise ValueError("printed no JSON on its last line") from None
  if not isinstance(value, dict):
    raise ValueError("printed no JSON object on its last line")
  return value


def collect(runs: dict, devices_found: dict, failed: dict, smoke: bool) -> dict:
  """The suite's JSON: each run's own JSON, the table's rows and ratios, what failed.

  A run that lacks one of its rows' images/s is added to (a copy of) `failed`.
  """
  failed = dict(failed)
  rows = []
  for label, run, key in ROWS:
    result = runs.get(run, {})
    value = result.get("images_per_s", {}).get(key)
    if run in runs and not (isinstance(value, (int, float)) and value > 0):
      failed.setdefault(run, f"printed no positive images_per_s for {key}")
    rows.append({"name": label, "run": run, "images_per_s": value,
                 "step_ms": result.get("step_ms", {}).get(key)})
  images_per_s = {row["name"]: row["images_per_s"] for row in rows}
  ratios = {}
  for key, _, numerator, denominator in RATIOS:
    top, bottom = images_per_s[numerator], images_per_s[denominator]
    ratios[key] = round(top / bottom, 4) if top and bottom else None
  order = list(RUNS)
  failed = {name: failed[name] for name in sorted(
      failed, key=lambda name: order.index(name) if name in order else len(order))}
  return {"smoke": smoke, "devices": devices_found, "rows": rows, "ratios": ratios,
          "mask_selection": runs.get("mask_selection"), "runs": runs, "failed": failed}


def _number(value, digits: int) -> str:
  return "n/a" if value is None else f"{value:.{digits}f}"


def table(suite: dict) -> str:
  """The suite as markdown: images/s per step, the ratios, mask selection per method."""
  f32 = suite["runs"].get("f32") or suite["runs"].get("bf16") or {}
  size = "x".join(str(n) for n in f32.get("input", [])[:2])
  title = (f"GPU suite{' (smoke)' if suite['smoke'] else ''}: {f32.get('model', '?')}, "
           f"batch {f32.get('batch_size', '?')}, {size or '?'}, synthetic data")
  lines = [f"## {title}", "",
           f"Devices: jax {suite['devices'].get('jax', '?')}; "
           f"torch {suite['devices'].get('torch', '?')}", "",
           "| step | images/s | ms/step |", "| --- | ---: | ---: |"]
  lines += [f"| {row['name']} | {_number(row['images_per_s'], 1)} | "
            f"{_number(row['step_ms'], 2)} |" for row in suite["rows"]]
  lines += ["", "| ratio | value |", "| --- | ---: |"]
  lines += [f"| {label} | {_number(suite['ratios'][key], 3)} |" for key, label, _, _ in RATIOS]
  masks = suite["mask_selection"]
  if masks:
    lines += ["", f"Mask selection ({masks.get('backend', '?')}): chosen "
              f"{masks.get('chosen', '?')}; exact methods agree: "
              f"{'yes' if masks.get('exact_methods_agree') else 'no'}", "",
              "| method | ms | fraction of dense step | exact |", "| --- | ---: | ---: | --- |"]
    lines += [f"| {name} | {_number(method.get('ms'), 2)} | "
              f"{_number(method.get('fraction_of_dense_step'), 4)} | "
              f"{'yes' if method.get('exact') else 'no'} |"
              for name, method in masks.get("methods", {}).items()]
  if suite["failed"]:
    lines += ["", "Failed: " + "; ".join(f"{RUNS.get(name, name)}: {reason}"
                                         for name, reason in suite["failed"].items())]
  return "\n".join(lines) + "\n"


def _pairs(values: list[str], flag: str) -> dict:
  pairs = {}
  for value in values:
    name, sep, rest = value.partition("=")
    if not sep:
      raise SystemExit(f"gpu_suite_table: {flag} takes NAME=VALUE, not {value!r}")
    pairs[name] = rest
  return pairs


def main() -> int:
  parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
  commands = parser.add_subparsers(dest="command", required=True)
  query = commands.add_parser("devices", help="print the devices JAX and PyTorch run on")
  query.add_argument("--torch_device", default="cpu")
  gather = commands.add_parser("collect", help="write the suite's JSON and print its table")
  gather.add_argument("--out", required=True, help="the suite's JSON file")
  gather.add_argument("--devices", help="a JSON file from `devices`")
  gather.add_argument("--run", action="append", default=[], help="NAME=FILE: a run's stdout")
  gather.add_argument("--failed", action="append", default=[], help="NAME=REASON")
  gather.add_argument("--smoke", action="store_true")
  gather.add_argument("--log", help="the runs' output, named in the failure line")
  args = parser.parse_args()
  if args.command == "devices":
    print(json.dumps(devices(args.torch_device)))
    return 0

  failed = _pairs(args.failed, "--failed")
  runs = {}
  for name, path in _pairs(args.run, "--run").items():
    if name in failed:
      continue
    try:
      runs[name] = last_json_line(Path(path))
    except (OSError, ValueError) as error:
      failed[name] = str(error)
  try:
    devices_found = json.loads(Path(args.devices).read_text()) if args.devices else {}
  except (OSError, ValueError):
    devices_found = {}
  suite = collect(runs, devices_found, failed, args.smoke)
  out = Path(args.out)
  out.parent.mkdir(parents=True, exist_ok=True)
  out.write_text(json.dumps(suite, indent=2) + "\n")
  markdown = table(suite)
  out.with_suffix(".md").write_text(markdown)
  print(markdown, end="")
  if suite["failed"]:
    print("gpu_suite: failed: " + "; ".join(f"{RUNS.get(name, name)} ({reason})"
                                           for name, reason in suite["failed"].items())
          + (f"; see {args.log}" if args.log else ""), file=sys.stderr)
    return 2
  return 0


if __name__ == "__main__":
  sys.exit(main())
