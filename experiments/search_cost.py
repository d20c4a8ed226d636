"""Search cost: steps to reach within 1 point of dense, magnitude vs Kaiming (edge-popup) init.

  python experiments/search_cost.py --config=configs/default.py --output=results/cost \
      [--max_epochs=4] [--eval_every_epochs=0.25] [--set=key=value ...]

For each sparsity and initialisation it searches up to --max_epochs, evaluating every
--eval_every_epochs, and reports the first evaluated step within --tolerance of dense.
A run that never gets there is reported as "> max steps", and the ratio as a lower bound.
"""

from __future__ import annotations

from pathlib import Path

from absl import app, flags

from jackpot_jax import fileio

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("config", "configs/default.py", "config file")
flags.DEFINE_string("output", "results/cost", "output directory")
flags.DEFINE_list("sparsities", ["0.9", "0.95"], "target conv sparsities")
flags.DEFINE_float("max_epochs", 4.0, "search budget per run")
flags.DEFINE_float("eval_every_epochs", 0.25, "evaluation interval")
flags.DEFINE_float("tolerance", 0.01, "within this of dense accuracy counts as reached")
flags.DEFINE_multi_string("set", [], "config overrides, key=value")


def first_step_at(report: dict, goal: float) -> int | None:
  """First evaluated step whose jackpot accuracy is at least `goal`."""
  for point in report["search"]["history"]:
    if point["jackpot_accuracy"] >= goal:
      return point["step"]
  return None


def steps_to_reach(report: dict, tolerance: float) -> int | None:
  return first_step_at(report, report["accuracy"]["dense"] - tolerance)


def matched_accuracy_ratios(magnitude: dict, kaiming: dict) -> list[dict]:
  """For each magnitude-init evaluation (step s, accuracy a): the first Kaiming-init step
  with accuracy >= a, and the ratio of the two step counts. A budget too short for the
  "within 1 point of dense" goal still shows how much longer the slow start needs."""
  points = []
  for point in magnitude["search"]["history"]:
    later = first_step_at(kaiming, point["jackpot_accuracy"])
    points.append({"accuracy": point["jackpot_accuracy"], "magnitude_steps": point["step"],
                   "kaiming_steps": later,
                   "ratio": None if later is None else later / point["step"]})
  return points


def main(argv):
  del argv
  output = Path(FLAGS.output)
  rows = []
  for target in [float(s) for s in FLAGS.sparsities]:
    reached, reports = {}, {}
    for init in ("magnitude", "kaiming"):
      overrides = {**common.parse_overrides(FLAGS.set), "search.sparsity": target,
                   "search.score_init": init, "search.num_epochs": FLAGS.max_epochs,
                   "eval.every_epochs": FLAGS.eval_every_epochs, "progress_bar": False}
      config = common.load_config(FLAGS.config, overrides)
      report = reports[init] = common.run(config, output / f"sparsity_{target:g}_{init}")
      reached[init] = {"steps": steps_to_reach(report, FLAGS.tolerance),
                       "budget_steps": report["search"]["steps"],
                       "final": report["accuracy"]["jackpot"], "dense": report["accuracy"]["dense"]}
    magnitude, kaiming = reached["magnitude"], reached["kaiming"]
    if magnitude["steps"] and kaiming["steps"]:
      ratio, bound = kaiming["steps"] / magnitude["steps"], "="
    elif magnitude["steps"]:
      ratio, bound = kaiming["budget_steps"] / magnitude["steps"], ">"
    else:
      ratio, bound = None, "n/a"
    matched = matched_accuracy_ratios(reports["magnitude"], reports["kaiming"])
    rows.append({"target": target, "magnitude": magnitude, "kaiming": kaiming,
                 "ratio": ratio, "ratio_bound": bound, "matched_accuracy": matched})
    for point in matched:
      later = point["kaiming_steps"]
      print(f"  magnitude init reaches {point['accuracy']:.4f} at step {point['magnitude_steps']}; "
            + ("kaiming init never does" if later is None else
               f"kaiming init at step {later} ({point['ratio']:.1f}x)"))
    print(f"sparsity {target:.2f}: magnitude reaches dense-{FLAGS.tolerance:g} at "
          f"{magnitude['steps']} steps, kaiming at {kaiming['steps']} "
          f"(budget {kaiming['budget_steps']}); ratio {bound} {ratio}")
  fileio.write_json(output / "cost.json", {
      "config": FLAGS.config, "overrides": FLAGS.set, "max_epochs": FLAGS.max_epochs,
      "eval_every_epochs": FLAGS.eval_every_epochs, "tolerance": FLAGS.tolerance,
      "machine": common.machine(), "rows": rows})
  fmt = lambda r: "> budget" if r["steps"] is None else str(r["steps"])
  lines = ["| sparsity | magnitude init: steps | kaiming init: steps | ratio (kaiming / magnitude) |",
           "|---|---|---|---|"]
  lines += [f"| {r['target']:.2f} | {fmt(r['magnitude'])} | {fmt(r['kaiming'])} | "
            + ("-" if r["ratio"] is None else f"{'' if r['ratio_bound'] == '=' else '> '}{r['ratio']:.2f}")
            + " |" for r in rows]
  lines += ["", "| sparsity | accuracy | magnitude init: steps | kaiming init: steps | ratio |",
            "|---|---|---|---|---|"]
  for r in rows:
    for p in r["matched_accuracy"]:
      kaiming_steps = "> budget" if p["kaiming_steps"] is None else str(p["kaiming_steps"])
      ratio_text = (f"> {r['kaiming']['budget_steps'] / p['magnitude_steps']:.1f}"
                    if p["ratio"] is None else f"{p['ratio']:.1f}")
      lines.append(f"| {r['target']:.2f} | {100 * p['accuracy']:.2f} | {p['magnitude_steps']} | "
                   f"{kaiming_steps} | {ratio_text} |")
  fileio.write_text(output / "cost.md", "\n".join(lines) + "\n")
  print(f"wrote {output}/cost.{{json,md}}")


if __name__ == "__main__":
  app.run(main)
