"""Search cost: how many search steps magnitude init and Kaiming (edge-popup) init need.

  python experiments/search_cost.py --config=configs/default.py --output=results/cost \
      [--budgets=0.5,1,2] [--claim=3] [--sparsities=0.9,0.95] [--config.a.b=value ...]

Each run is a whole search with its own cosine schedule over its budget (epochs) that
ends at the first evaluation reaching the goal (eval.stop_within_dense), so the steps it
ran are the steps the goal cost. Per sparsity:
1. magnitude init runs on the --budgets ladder, shortest first, until one reaches the goal
   "within --tolerance of dense". If none does, the goal becomes "the accuracy magnitude
   init reached with the largest budget" (the paper's "at equal accuracy");
2. Kaiming init then runs once with --claim times that budget, towards the same goal.
If Kaiming reaches it, the ratio is its steps over magnitude's; if not, the ratio is
"more than --claim": the paper's claim (at least 3x cheaper) holds on this run.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from jackpot_jax import fileio

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "results/cost", "output directory")
flags.DEFINE_list("sparsities", ["0.9", "0.95"], "target conv sparsities")
flags.DEFINE_list("budgets", ["0.5", "1", "2"], "magnitude-init search budgets (epochs), tried in order")
flags.DEFINE_float("claim", 3.0, "Kaiming init gets this many times magnitude init's budget")
flags.DEFINE_float("eval_every_epochs", 0.25, "evaluation interval")
flags.DEFINE_float("tolerance", 0.01, "within this of dense accuracy counts as reached")


def search(target: float, init: str, epochs: float, stop_within_dense: float) -> dict:
  """One search run (resumed or reused if its sub-workdir already holds it), summarised."""
  config = common.config_with({"search.sparsity": target, "search.score_init": init,
                               "search.num_epochs": epochs,
                               "eval.every_epochs": FLAGS.eval_every_epochs,
                               "eval.stop_within_dense": stop_within_dense,
                               "progress_bar": False})
  report = common.run(config, Path(FLAGS.output) / f"sparsity_{target:g}_{init}_{epochs:g}ep")
  run = {"init": init, "budget_epochs": epochs, "budget_steps": report["search"]["planned_steps"],
         "steps": report["search"]["steps"], "reached": report["search"]["goal_reached_at"] is not None,
         "final": report["accuracy"]["jackpot"], "dense": report["accuracy"]["dense"],
         "wall_seconds": report["search"]["wall_seconds"]}
  print(f"  {init} init, {epochs:g} epochs ({run['budget_steps']} steps): "
        + (f"goal reached at step {run['steps']}" if run["reached"] else "goal not reached")
        + f", jackpot {100 * run['final']:.2f}% (dense {100 * run['dense']:.2f}%)", flush=True)
  return run


def measure(target: float) -> dict:
  """The magnitude ladder, then one Kaiming run with --claim times the budget that sufficed."""
  print(f"sparsity {target:g}: goal within {100 * FLAGS.tolerance:g} point(s) of dense", flush=True)
  ladder = []
  for epochs in [float(b) for b in FLAGS.budgets]:
    ladder.append(search(target, "magnitude", epochs, FLAGS.tolerance))
    if ladder[-1]["reached"]:
      break
  magnitude = ladder[-1]
  if magnitude["reached"]:
    goal, goal_name, tolerance = (magnitude["dense"] - FLAGS.tolerance,
                                  f"dense - {100 * FLAGS.tolerance:g} point(s)", FLAGS.tolerance)
  else:
    goal, goal_name = magnitude["final"], "magnitude init's final accuracy, largest budget"
    tolerance = magnitude["dense"] - goal + 1e-6  # float rounding must not miss equal accuracy
    print(f"  magnitude init never got within {100 * FLAGS.tolerance:g} point(s); the goal is "
          f"its own {100 * goal:.2f}%", flush=True)
  kaiming = search(target, "kaiming", FLAGS.claim * magnitude["budget_epochs"], tolerance)
  reached = kaiming["reached"]
  ratio = kaiming["steps"] / magnitude["steps"]
  print(f"sparsity {target:g}: kaiming / magnitude steps {'=' if reached else '>'} {ratio:.2f} "
        f"(claim: >= {FLAGS.claim:g})", flush=True)
  return {"target": target, "goal": goal, "goal_kind": goal_name, "magnitude_ladder": ladder,
          "magnitude": magnitude, "kaiming": kaiming, "ratio": ratio,
          "ratio_bound": "=" if reached else ">"}


def _cell(run: dict) -> str:
  return (f"{run['budget_epochs']:g} ep, " + (f"{run['steps']}" if run["reached"] else
          f"not reached in {run['steps']} ({100 * run['final']:.2f}%)"))


def table(rows: list[dict]) -> str:
  lines = ["| sparsity | goal (top-1) | magnitude init: budget, steps to goal | "
           "kaiming init: budget, steps to goal | kaiming / magnitude |", "|---|---|---|---|---|"]
  for r in rows:
    magnitude = r["magnitude"]
    magnitude_cell = (_cell(magnitude) if magnitude["reached"] else
                      f"{magnitude['budget_epochs']:g} ep, {magnitude['steps']} (sets the goal)")
    lines.append(f"| {r['target']:.2f} | {100 * r['goal']:.2f} ({r['goal_kind']}) | "
                 f"{magnitude_cell} | {_cell(r['kaiming'])} | "
                 f"{'' if r['ratio_bound'] == '=' else '> '}{r['ratio']:.2f} |")
  lines += ["", "Magnitude-init runs (the ladder):", "",
            "| sparsity | budget | steps | reached | jackpot top-1 |", "|---|---|---|---|---|"]
  for r in rows:
    for run in r["magnitude_ladder"]:
      lines.append(f"| {r['target']:.2f} | {run['budget_epochs']:g} ep | {run['steps']} | "
                   f"{'yes' if run['reached'] else 'no'} | {100 * run['final']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  rows = [measure(float(s)) for s in FLAGS.sparsities]
  output = Path(FLAGS.output)
  fileio.write_json(output / "cost.json", {
      **common.config_source(), "budgets": FLAGS.budgets,
      "claim": FLAGS.claim, "eval_every_epochs": FLAGS.eval_every_epochs,
      "tolerance": FLAGS.tolerance, "machine": common.machine(), "rows": rows})
  fileio.write_text(output / "cost.md", table(rows))
  print(f"wrote {output}/cost.{{json,md}}")


if __name__ == "__main__":
  common.main(main)
