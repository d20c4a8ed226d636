"""Search cost: how many search steps magnitude init and random inits need.

  python experiments/search_cost.py --config=configs/default.py --output=results/cost \
      [--budgets=0.5,1,2] [--claim=3] [--sparsities=0.9,0.95] \
      [--random_inits=kaiming,edge_popup] [--config.a.b=value ...]

Each run is a whole search with its own cosine schedule over its budget (epochs) that
ends at the first evaluation reaching the goal (eval.stop_within_dense), so the steps it
ran are the steps the goal cost. Goals are measured on the training images held out of
the search (data.holdout_images), never on the test split; the test accuracy of each
run's jackpot is reported beside them. A run's held-out accuracy is its jackpot's: the best
of its evaluations, its start included (search.selected_on); the start never ends a run,
so "steps to goal" counts search steps. Per sparsity:
1. magnitude init runs on the --budgets ladder, shortest first, until one reaches the goal
   "within --tolerance of dense". If none does, the goal becomes "the held-out accuracy
   magnitude init reached with the largest budget" (the paper's "at equal accuracy");
2. each of --random_inits then runs once with --claim times that budget, towards the same
   goal: `kaiming` (Kaiming-uniform scores ranked signed, the lottery-jackpots code's
   random init) and `edge_popup` (the same scores ranked by |score|, as edge-popup does).
If a random init reaches the goal, the ratio is its steps over magnitude's; if not, the
ratio is "more than --claim": the paper's claim (at least 3x cheaper) holds on this run.
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
flags.DEFINE_list("random_inits", ["kaiming", "edge_popup"], "random score inits to compare")
flags.DEFINE_float("claim", 3.0, "random inits get this many times magnitude init's budget")
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
         "holdout": report["holdout"]["jackpot"], "holdout_dense": report["holdout"]["dense"],
         "final": report["accuracy"]["jackpot"], "dense": report["accuracy"]["dense"],
         "wall_seconds": report["search"]["wall_seconds"]}
  print(f"  {init} init, {epochs:g} epochs ({run['budget_steps']} steps): "
        + (f"goal reached at step {run['steps']}" if run["reached"] else "goal not reached")
        + f", held-out {100 * run['holdout']:.2f}% (dense {100 * run['holdout_dense']:.2f}%), "
        f"test {100 * run['final']:.2f}% (dense {100 * run['dense']:.2f}%)", flush=True)
  return run


def measure(target: float) -> dict:
  """The magnitude ladder, then each random init with --claim times the budget that sufficed."""
  print(f"sparsity {target:g}: goal within {100 * FLAGS.tolerance:g} point(s) of dense", flush=True)
  ladder = []
  for epochs in [float(b) for b in FLAGS.budgets]:
    ladder.append(search(target, "magnitude", epochs, FLAGS.tolerance))
    if ladder[-1]["reached"]:
      break
  magnitude = ladder[-1]
  if magnitude["reached"]:
    goal, goal_name, tolerance = (magnitude["holdout_dense"] - FLAGS.tolerance,
                                  f"dense - {100 * FLAGS.tolerance:g} point(s)", FLAGS.tolerance)
  else:
    goal, goal_name = magnitude["holdout"], "magnitude init's accuracy, largest budget"
    # Float rounding must not miss equal accuracy.
    tolerance = magnitude["holdout_dense"] - goal + 1e-6
    print(f"  magnitude init never got within {100 * FLAGS.tolerance:g} point(s); the goal is "
          f"its own {100 * goal:.2f}%", flush=True)
  randoms = {}
  for init in FLAGS.random_inits:
    run = search(target, init, FLAGS.claim * magnitude["budget_epochs"], tolerance)
    run["ratio"] = run["steps"] / magnitude["steps"]
    run["ratio_bound"] = "=" if run["reached"] else ">"
    print(f"sparsity {target:g}: {init} / magnitude steps {run['ratio_bound']} "
          f"{run['ratio']:.2f} (claim: >= {FLAGS.claim:g})", flush=True)
    randoms[init] = run
  return {"target": target, "goal": goal, "goal_kind": goal_name, "magnitude_ladder": ladder,
          "magnitude": magnitude, "random_inits": randoms}


def _cell(run: dict) -> str:
  return (f"{run['budget_epochs']:g} ep, " + (f"{run['steps']}" if run["reached"] else
          f"not reached in {run['steps']} ({100 * run['holdout']:.2f}%)"))


def table(rows: list[dict]) -> str:
  inits = list(rows[0]["random_inits"]) if rows else []
  lines = ["| sparsity | goal (held-out top-1) | magnitude init: budget, steps to goal | "
           + "".join(f"{init} init: budget, steps to goal | {init} / magnitude | "
                     for init in inits),
           "|---|---|---|" + "---|---|" * len(inits)]
  for r in rows:
    magnitude = r["magnitude"]
    magnitude_cell = (_cell(magnitude) if magnitude["reached"] else
                      f"{magnitude['budget_epochs']:g} ep, {magnitude['steps']} (sets the goal)")
    cells = "".join(f"{_cell(run)} | {'' if run['ratio_bound'] == '=' else '> '}"
                    f"{run['ratio']:.2f} | " for run in r["random_inits"].values())
    lines.append(f"| {r['target']:.2f} | {100 * r['goal']:.2f} ({r['goal_kind']}) | "
                 f"{magnitude_cell} | {cells}")
  lines += ["", "Every run (held-out accuracy chose the stop and the jackpot; test accuracy of "
            "the jackpot):",
            "", "| sparsity | init | budget | steps | reached | held-out top-1 | test top-1 |",
            "|---|---|---|---|---|---|---|"]
  for r in rows:
    for run in r["magnitude_ladder"] + list(r["random_inits"].values()):
      lines.append(f"| {r['target']:.2f} | {run['init']} | {run['budget_epochs']:g} ep | "
                   f"{run['steps']} | {'yes' if run['reached'] else 'no'} | "
                   f"{100 * run['holdout']:.2f} | {100 * run['final']:.2f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  rows = [measure(float(s)) for s in FLAGS.sparsities]
  output = Path(FLAGS.output)
  fileio.write_json(output / "cost.json", {
      **common.config_source(), "budgets": FLAGS.budgets, "random_inits": FLAGS.random_inits,
      "claim": FLAGS.claim, "eval_every_epochs": FLAGS.eval_every_epochs,
      "tolerance": FLAGS.tolerance, "machine": common.machine(), "rows": rows})
  fileio.write_text(output / "cost.md", table(rows))
  print(f"wrote {output}/cost.{{json,md}}")


if __name__ == "__main__":
  common.main(main)
