"""Time to a jackpot: accuracy against images seen and wall-clock seconds, per search recipe.

  python experiments/time_to_jackpot.py --config=configs/default.py --output=results/ttj \
      [--budgets=0.25,0.5,1,2] [--recipes=reference,distill,adam] [--tolerance=0.01] \
      [--config.a.b=value ...]

A recipe is a named set of config overrides applied to the given config (RECIPES below;
`reference` is the config as given). For every recipe and every budget (search epochs)
one whole search runs, with its own schedule over that budget, in its own sub-workdir of
--output; a rerun reuses every run whose report.json exists (and refuses a sub-workdir
that holds another config's run). Each search is evaluated at its start and at its last
step on the training images held out of it (data.holdout_images); its jackpot is the
better of the two (search.selected_on), and that held-out accuracy is what every
comparison here selects on. The test accuracy (data.eval_split, measured once at the end
of each run) and the dense network's are listed beside it, never compared.

Recorded per run: steps, images seen (steps x batch), the search's wall-clock seconds as
report.json measures them (the step's compilation, the steps and the two held-out
evaluations; not the baselines or the test evaluation), held-out, test and dense accuracy,
and the share of its jackpot's kept weights that the next smaller budget's jackpot keeps
too (each run's masks are written to jackpot_masks.npz in its sub-workdir).
The summary gives, per recipe, the fewest steps (smallest budget) at which it reaches the
reference's 1-epoch held-out accuracy, and at which it gets within --tolerance of dense.
Writes results.json, results.md and results.png (held-out accuracy against images seen
and against wall-clock seconds, one line per recipe).
"""

from __future__ import annotations

import dataclasses
import math
from pathlib import Path
from typing import Callable

import ml_collections
import numpy as np
from absl import flags

from jackpot_jax import data as data_lib, fileio
from jackpot_jax.run import spec as spec_lib, workdir_export

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "results/time_to_jackpot", "output directory")
flags.DEFINE_list("budgets", ["0.25", "0.5", "1", "2"], "search budgets (epochs), each a whole "
                  "search with its own schedule")
flags.DEFINE_list("recipes", ["reference", "distill", "adam"], "recipes (names in RECIPES)")
flags.DEFINE_float("tolerance", 0.01, "'within dense' means within this of the dense "
                   "network's held-out accuracy")

# The warm-up of the recipes that have one: this fraction of each run's steps.
WARMUP_FRACTION = 0.05
# The sparsity ramp of the recipes that have one: over this fraction of the steps, from
# half the target sparsity.
RAMP_FRACTION = 0.5
# The flip cap of the recipes that have one: swaps per layer and step at the first step.
MAX_FLIPS = 8
# Each run's jackpot masks, for the overlap between successive budgets.
MASKS_FILE = "jackpot_masks.npz"


@dataclasses.dataclass(frozen=True)
class Context:
  """What a recipe's overrides may depend on: the given config, the budget, the data."""

  config: ml_collections.ConfigDict
  epochs: float
  num_train: int

  def steps(self, batch_size: int) -> int:
    """The search steps of this budget at `batch_size` (as run/setup.py counts them)."""
    return max(int(round(self.epochs * max(self.num_train // batch_size, 1))), 1)

  def warmup(self, batch_size: int | None = None) -> int:
    batch_size = self.config.search.batch_size if batch_size is None else batch_size
    return max(int(round(WARMUP_FRACTION * self.steps(batch_size))), 1)


@dataclasses.dataclass(frozen=True)
class Recipe:
  """A named change of the given config: what it is (for the tables) and its overrides."""

  doc: str
  overrides: Callable[[Context], dict]


def _distill(weight: float, temperature: float = 4.0) -> Callable[[Context], dict]:
  return lambda c: {"search.distill_weight": weight, "search.distill_temperature": temperature}


def _adam(learning_rate: float) -> Callable[[Context], dict]:
  # Adam moves every score by about lr per step whatever its gradient's size, so
  # lr / (the init's gap, 0.01) sets how soon the first masks flip; coupled weight decay
  # would enter Adam's normalisation, so there is none.
  return lambda c: {"search.optimizer": "adam", "search.learning_rate": learning_rate,
                    "search.weight_decay": 0.0, "search.warmup_steps": c.warmup()}


def _lr_times(factor: float) -> Callable[[Context], dict]:
  return lambda c: {"search.learning_rate": c.config.search.learning_rate * factor}


def _small_batch(scale_lr: bool) -> Callable[[Context], dict]:
  def overrides(c: Context) -> dict:
    batch_size = max(c.config.search.batch_size // 4, 1)
    values = {"search.batch_size": batch_size}
    if scale_lr:
      values["search.learning_rate"] = c.config.search.learning_rate / 4
    return values

  return overrides


def _ramp(c: Context) -> dict:
  return {"search.sparsity_ramp": RAMP_FRACTION,
          "search.start_sparsity": c.config.search.sparsity / 2}


RECIPES = {
    "reference": Recipe("the config as given", lambda c: {}),
    "distill": Recipe("+ distillation from the dense network, w = 0.5, T = 4 (Hinton et al. "
                      "2015)", _distill(0.5)),
    "distill_w0.9": Recipe("+ distillation, w = 0.9, T = 4 (the CIFAR setting of Tian et al. "
                           "2020's distillation benchmark)", _distill(0.9)),
    "adam": Recipe("Adam on the scores, lr 1e-3, 5% warm-up, cosine, no weight decay",
                   _adam(1e-3)),
    "adam_lr1e-2": Recipe("Adam, lr 1e-2 (movement pruning's score rate, Sanh et al. 2020), "
                          "5% warm-up, cosine, no weight decay", _adam(1e-2)),
    "adam_distill": Recipe("Adam lr 1e-3 as `adam`, + distillation w = 0.5, T = 4",
                           lambda c: {**_adam(1e-3)(c), **_distill(0.5)(c)}),
    "lr_x3": Recipe("3x the given learning rate (for SGD, the same masks as a third of the "
                    "magnitude init's gap with 3x the weight decay: tests/run/test_recipe.py)",
                    _lr_times(3.0)),
    "lr_x0.3": Recipe("0.3x the given learning rate", _lr_times(0.3)),
    "warmup": Recipe("+ linear warm-up over 5% of the steps", lambda c: {
        "search.warmup_steps": c.warmup()}),
    "no_weight_decay": Recipe("no weight decay on the scores", lambda c: {
        "search.weight_decay": 0.0}),
    "small_batch": Recipe("a quarter of the batch, lr / 4 (linear scaling, Goyal et al. 2017): "
                          "4x the steps at equal images seen", _small_batch(scale_lr=True)),
    "small_batch_same_lr": Recipe("a quarter of the batch, the given lr",
                                  _small_batch(scale_lr=False)),
    "bn_reestimated": Recipe("the reference search; each evaluation and the result use BN "
                             "statistics re-estimated for the mask on `eval.recalibration_images` "
                             "training images (search.bn_statistics=reestimated)",
                             lambda c: {"search.bn_statistics": "reestimated"}),
    "distill_bn_reestimated": Recipe("`distill` with `bn_reestimated`'s statistics",
                                     lambda c: {**_distill(0.5)(c),
                                                "search.bn_statistics": "reestimated"}),
    "ramp": Recipe(f"sparsity annealed cubically from half the target to the target over "
                   f"the first {RAMP_FRACTION:g} of the steps (Zhu & Gupta 2017), from the "
                   "magnitude mask at half the target", _ramp),
    "flip_cap": Recipe(f"at most {MAX_FLIPS} weights swapped into each layer a step, the cap "
                       "decaying as (1 - t/T)^4 to 1 (the authors' short restriction, as "
                       "meant)", lambda c: {"search.max_flips_per_step": MAX_FLIPS}),
    "small_batch_ramp": Recipe("`small_batch` with `ramp`",
                               lambda c: {**_small_batch(scale_lr=True)(c), **_ramp(c)}),
    "features": Recipe("+ a per-block feature loss against the dense network, weight 1 "
                       "(search.feature_distill_weight=1)",
                       lambda c: {"search.feature_distill_weight": 1.0}),
    "local": Recipe("the first quarter of the steps trains every block on the dense block's "
                    "input and output (search.local_fraction=0.25), then end to end",
                    lambda c: {"search.local_fraction": 0.25}),
    "local_features": Recipe("`local`, then end to end with `features`'s loss", lambda c: {
        "search.local_fraction": 0.25, "search.feature_distill_weight": 1.0}),
    "distill_features": Recipe("`distill` with `features`", lambda c: {
        **_distill(0.5)(c), "search.feature_distill_weight": 1.0}),
    "features_w3": Recipe("the per-block feature loss with weight 3 "
                          "(search.feature_distill_weight=3)",
                          lambda c: {"search.feature_distill_weight": 3.0}),
    "features_bn_reestimated": Recipe("`features` with `bn_reestimated`'s statistics",
                                      lambda c: {"search.feature_distill_weight": 1.0,
                                                 "search.bn_statistics": "reestimated"}),
    "small_batch_features": Recipe("`small_batch` with `features`", lambda c: {
        **_small_batch(scale_lr=True)(c), "search.feature_distill_weight": 1.0}),
    "bn_momentum_0.3": Recipe("BN running statistics with momentum 0.3 (PyTorch's "
                              "convention; reference 0.1): they follow the mask faster",
                              lambda c: {"search.bn_momentum": 0.3}),
}


def _parse_budgets(values: list[str]) -> list[float]:
  try:
    budgets = [float(v) for v in values]
  except ValueError as error:
    raise ValueError(f"--budgets must be numbers of epochs, got {','.join(values)}") from error
  if not budgets or any(not math.isfinite(b) or b <= 0 for b in budgets):
    raise ValueError(f"--budgets must be positive numbers of epochs, got {','.join(values)}")
  return sorted(set(budgets))


def _check_recipes(names: list[str]) -> list[str]:
  if not names:
    raise ValueError(f"--recipes names no recipe; choose from {', '.join(RECIPES)}")
  unknown = [name for name in names if name not in RECIPES]
  if unknown:
    raise ValueError(f"unknown recipe {unknown[0]!r} in --recipes; choose from "
                     f"{', '.join(RECIPES)}")
  return list(dict.fromkeys(names))


def run_one(name: str, epochs: float, context: Context, output: Path) -> dict:
  """One whole search of recipe `name` over `epochs` (reused if finished), summarised."""
  overrides = RECIPES[name].overrides(dataclasses.replace(context, epochs=epochs))
  config = common.config_with({
      **overrides, "search.num_epochs": epochs,
      # Evaluations at the start and the last step only, on the held-out images; no early end.
      "eval.every_epochs": epochs, "eval.stop_within_dense": 0.0, "progress_bar": False})
  workdir = output / f"{name}_{epochs:g}ep"
  report = common.finished_report(config, workdir) or common.run(config, workdir)
  if not (workdir / MASKS_FILE).exists():
    workdir_export.export_workdir(workdir, workdir / MASKS_FILE, format="masks")
  search = report["search"]
  row = {"recipe": name, "budget_epochs": epochs, "steps": search["steps"],
         "batch_size": search["batch_size"],
         "images_seen": search["steps"] * search["batch_size"],
         "wall_seconds": search["wall_seconds"], "holdout": report["holdout"]["jackpot"],
         "holdout_dense": report["holdout"]["dense"],
         "holdout_images": report["holdout"]["images"], "test": report["accuracy"]["jackpot"],
         "dense": report["accuracy"]["dense"], "target_sparsity": report["target_sparsity"],
         "workdir": str(workdir), "overrides": {k: repr(v) for k, v in overrides.items()}}
  print(f"{name}, {epochs:g} epoch(s): {row['steps']} steps, {row['images_seen']} images, "
        f"{row['wall_seconds']:.1f} s; held-out {common.pct(row['holdout'])}% (dense "
        f"{common.pct(row['holdout_dense'])}%), test {common.pct(row['test'])}%", flush=True)
  return row


def kept_overlap(a: Path, b: Path) -> float:
  """Of the weights the masks file `a` keeps, the fraction the masks file `b` (the same
  model's) keeps too, over every masked layer (`export --format=masks` files: each
  layer's mask as packed bits, zero-padded to whole bytes)."""
  with np.load(a) as first, np.load(b) as second:
    layers = [key for key in first.files if key.startswith("mask_")]
    masks = [(np.unpackbits(first[key]), np.unpackbits(second[key])) for key in layers]
  kept = sum(int(x.sum()) for x, _ in masks)
  return sum(int((x & y).sum()) for x, y in masks) / max(kept, 1)


def add_overlaps(rows: list[dict]) -> None:
  """Each run's `overlap_with_previous`: the kept weights it shares with the jackpot of the
  next smaller budget of its recipe (None for the smallest). Near 1, more steps did not
  move the mask: a setting short of flips; low, the mask moves but the held-out accuracy
  may not follow: short of signal."""
  for name in dict.fromkeys(r["recipe"] for r in rows):
    runs = sorted((r for r in rows if r["recipe"] == name), key=lambda r: r["budget_epochs"])
    runs[0]["overlap_with_previous"] = None
    for previous, run in zip(runs, runs[1:]):
      run["overlap_with_previous"] = kept_overlap(Path(run["workdir"]) / MASKS_FILE,
                                                  Path(previous["workdir"]) / MASKS_FILE)


def _first(runs: list[dict], reached: Callable[[dict], bool]) -> dict | None:
  """The run of the smallest budget that reaches a goal, or None."""
  return next((run for run in sorted(runs, key=lambda r: r["budget_epochs"]) if reached(run)),
              None)


def summarise(rows: list[dict], tolerance: float) -> dict:
  """Per recipe: the first budget reaching the reference's 1-epoch held-out accuracy (and
  its steps and seconds over the reference's) and the first within `tolerance` of dense.
  Held-out accuracies only."""
  reference = next((r for r in rows if r["recipe"] == "reference" and r["budget_epochs"] == 1.0),
                   None)
  summary = {"reference_1_epoch": reference, "recipes": {}}
  for name in dict.fromkeys(r["recipe"] for r in rows):
    runs = [r for r in rows if r["recipe"] == name]
    entry = {"within_dense": _first(runs, lambda r: r["holdout"] >= r["holdout_dense"]
                                    - tolerance - 1e-9)}
    if reference is not None:
      goal = _first(runs, lambda r: r["holdout"] >= reference["holdout"] - 1e-9)
      entry["reaches_reference"] = goal
      if goal is not None:
        entry["steps_ratio"] = goal["steps"] / reference["steps"]
        entry["images_ratio"] = goal["images_seen"] / reference["images_seen"]
        entry["wall_ratio"] = goal["wall_seconds"] / max(reference["wall_seconds"], 1e-9)
    summary["recipes"][name] = entry
  return summary


def _overlap_cell(overlap: float | None) -> str:
  return "-" if overlap is None else f"{100 * overlap:.1f}%"


def _budget_cell(run: dict | None) -> str:
  if run is None:
    return "not reached"
  return f"{run['budget_epochs']:g} ep, {run['steps']} steps, {run['wall_seconds']:.0f} s"


def table(rows: list[dict], summary: dict, tolerance: float) -> str:
  lines = ["| recipe | budget (epochs) | steps | images seen | search wall s | held-out top-1 "
           "| test top-1 | dense test top-1 | kept weights shared with the previous budget's |",
           "|---|---|---|---|---|---|---|---|---|"]
  lines += [f"| {r['recipe']} | {r['budget_epochs']:g} | {r['steps']} | {r['images_seen']} | "
            f"{r['wall_seconds']:.1f} | {common.pct(r['holdout'])} | {common.pct(r['test'])} | "
            f"{common.pct(r['dense'])} | {_overlap_cell(r.get('overlap_with_previous'))} |"
            for r in rows]
  reference = summary["reference_1_epoch"]
  lines += ["", f"Held-out accuracy of the dense network: {common.pct(rows[0]['holdout_dense'])}"
            "; every comparison below uses held-out accuracy only.", ""]
  images = rows[0].get("holdout_images")  # absent from rows written before it was recorded
  if images:
    accuracy = (reference or rows[0])["holdout"]
    error = 100 * math.sqrt(accuracy * (1 - accuracy) / images)
    lines += [f"The held-out slice has {images} images (one image: {100 / images:.2f} "
              f"points); the binomial standard error of an accuracy of {common.pct(accuracy)} "
              f"on it is {error:.2f} points, so gaps smaller than that are not resolved.", ""]
  if reference is None:
    lines.append("No `reference` run at 1 epoch: the steps-to-reference columns are empty.")
  else:
    lines.append(f"The reference at 1 epoch: {common.pct(reference['holdout'])} held out, "
                 f"{reference['steps']} steps, {reference['wall_seconds']:.0f} s.")
  lines += ["", "| recipe | first budget reaching the reference's 1-epoch accuracy | steps / "
            "reference's | images / reference's | wall s / reference's | first budget within "
            f"{100 * tolerance:g} point(s) of dense |", "|---|---|---|---|---|---|"]
  for name, entry in summary["recipes"].items():
    goal = entry.get("reaches_reference")
    ratios = " | ".join("-" if goal is None else f"{entry[key]:.2f}"
                        for key in ("steps_ratio", "images_ratio", "wall_ratio"))
    lines.append(f"| {name} | {'-' if reference is None else _budget_cell(goal)} | "
                 f"{ratios} | {_budget_cell(entry['within_dense'])} |")
  lines += ["", "Recipes:", ""]
  lines += [f"- `{name}`: {RECIPES[name].doc}" for name in summary["recipes"]]
  return "\n".join(lines) + "\n"


def _one_two_five(value: float, _) -> str:
  """Log-axis labels at 1, 2 and 5 times a power of ten, plainly written."""
  leading = f"{value:.0e}"[0]
  return f"{value:g}" if leading in "125" else ""


def plot(rows: list[dict], path: Path, title: str) -> None:
  plt = common.pyplot()
  from matplotlib import ticker  # pylint: disable=import-outside-toplevel
  fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
  for axis, key, label in ((axes[0], "images_seen", "images seen by the search"),
                           (axes[1], "wall_seconds", "search wall-clock seconds")):
    for name in dict.fromkeys(r["recipe"] for r in rows):
      runs = sorted((r for r in rows if r["recipe"] == name), key=lambda r: r["budget_epochs"])
      axis.plot([r[key] for r in runs], [100 * r["holdout"] for r in runs], marker="o",
                label=name)
    axis.axhline(100 * rows[0]["holdout_dense"], color="gray", linestyle="--", label="dense")
    axis.set_xscale("log")
    axis.xaxis.set_major_formatter(ticker.FuncFormatter(_one_two_five))
    axis.xaxis.set_minor_formatter(ticker.FuncFormatter(_one_two_five))
    axis.set_xlabel(label)
  axes[0].set_ylabel("held-out top-1 accuracy (%)")
  axes[1].legend()
  fig.suptitle(title)
  fig.tight_layout()
  common.save_figure(fig, path)


def main(argv):
  del argv
  budgets, recipes = _parse_budgets(FLAGS.budgets), _check_recipes(FLAGS.recipes)
  output = Path(FLAGS.output)
  base = common.config_with({})
  context = Context(base, budgets[0],
                    data_lib.load_dataset_info(spec_lib.resolve(base).data).num_train)
  rows = [run_one(name, epochs, context, output) for name in recipes for epochs in budgets]
  add_overlaps(rows)
  summary = summarise(rows, FLAGS.tolerance)
  fileio.write_json(output / "results.json", {
      **common.config_source(), "budgets": budgets, "tolerance": FLAGS.tolerance,
      "recipes": {name: RECIPES[name].doc for name in recipes}, "machine": common.machine(),
      "rows": rows, "summary": summary})
  fileio.write_text(output / "results.md", table(rows, summary, FLAGS.tolerance))
  plot(rows, output / "results.png",
       f"{base.model.name} on {base.data.name}, {100 * rows[0]['target_sparsity']:g}% target "
       "sparsity: held-out accuracy per recipe")
  print(f"wrote {output}/results.{{json,md,png}}")


if __name__ == "__main__":
  common.main(main)
