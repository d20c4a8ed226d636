"""Reporting: report.json (machine-readable, a contract) and report.md (a per-layer table
for people)."""

from __future__ import annotations

import platform
from pathlib import Path
from typing import Any

import jax

from jackpot_jax import fileio
from jackpot_jax.search import sparsity
from jackpot_jax.data import resolved_preprocessing
from jackpot_jax.run.setup import SearchSetup


def build_report(setup: SearchSetup, state: Any, meta: dict, baseline: dict,
                 jackpot: float, tuned: float | None) -> dict:
  """report.json's content; the keys named in the main-job issue are a contract."""
  config = setup.config
  counted = sparsity.count_sparsity(setup.params, state.masks, setup.spec.model.maskable)
  counted.update(sparsity.check_pattern(setup.plan, state.masks))
  step = int(state.step)
  history = meta.get("history", [])
  selection, holdout_jackpot = _selection(setup.spec.selected_on, step, meta)
  return {
      "model": config.model.name,
      # Resolved: a checkpoint folder's sizes and labels, not only what the config named.
      "model_kwargs": dict(config.model.kwargs),
      "num_classes": config.model.num_classes,
      "checkpoint_input_shape": list(setup.imported.input_shape),
      "dataset": config.data.name,
      "data": {"image_shape": list(setup.data_info.image_shape),
               "preprocessing": setup.data_info.preprocessing.as_dict()},
      "checkpoint": str(config.model.checkpoint),
      "target_sparsity": float(setup.plan.target),
      "sparsity": counted,
      "accuracy": {"dense": baseline["dense"], "magnitude": baseline["magnitude"],
                   "magnitude_recalibrated": baseline.get("magnitude_recalibrated"),
                   "wanda": baseline.get("wanda"),
                   "wanda_recalibrated": baseline.get("wanda_recalibrated"),
                   "jackpot": jackpot, "tuned": tuned},
      "accuracy_split": config.data.eval_split,
      "accuracy_images": setup.data_info.num_test,
      "recalibration_images": baseline.get("recalibration_images", 0),
      "wanda_images": baseline.get("wanda_images", 0),
      "holdout": {"images": setup.data_info.num_holdout,
                  "dense": baseline.get("holdout", {}).get("dense"),
                  "jackpot": holdout_jackpot},
      "search": {"steps": step, "epochs": step / setup.steps_per_epoch,
                 "wall_seconds": float(meta.get("wall_seconds", 0.0)),
                 "score_init": config.search.score_init,
                 "sparsity_plan": config.search.sparsity_plan,
                 "pattern": config.search.pattern,
                 "bn_mode": config.search.bn_mode, "bn_statistics": config.search.bn_statistics,
                 "batch_size": config.search.batch_size,
                 "dtype": config.model.dtype,
                 "planned_steps": setup.total_steps,
                 "goal_reached_at": meta.get("goal_reached_at"),
                 **selection, "history": history},
      "layers": {l.name: {"shape": list(l.shape), "kind": l.kind,
                          "kept": setup.plan.keep_count(l), "size": l.size}
                 for l in setup.plan.layers},
      "source_sha256": setup.imported.source_sha256,
      "devices": devices(),
  }


def devices() -> dict:
  """report.json's `devices`: how many, which platform, how many processes."""
  return {"count": jax.device_count(), "platform": jax.default_backend(),
          "processes": jax.process_count()}


def cpu_name() -> str:
  """The CPU's model name (Linux's /proc/cpuinfo), else what `platform` knows."""
  try:
    with open("/proc/cpuinfo", encoding="utf-8") as cpuinfo:
      for line in cpuinfo:
        if line.startswith("model name"):
          return line.split(":", 1)[1].strip()
  except OSError:
    pass
  return platform.processor() or platform.machine()


def _selection(selected_on: str, last_step: int, meta: dict) -> tuple[dict, float | None]:
  """Which search state the jackpot is and how it compares with the start, held out; and
  the jackpot's held-out accuracy (None without held-out evaluations).

  A run saved before selection existed recorded no selection and no start: its jackpot
  is its last state, reported as last_step.
  """
  history = meta.get("history", [])
  start = next((h["jackpot_accuracy"] for h in history if h["step"] == 0), None)
  if selected_on == "holdout" and meta.get("selected") is not None:
    step, accuracy = meta["selected"]["step"], meta["selected"]["accuracy"]
  else:
    selected_on, step = "last_step", last_step
    accuracy = history[-1]["jackpot_accuracy"] if history else None
  fields = {"selected_on": selected_on, "selected_step": step, "start_holdout_accuracy": start,
            "beat_start": None if start is None or accuracy is None else accuracy > start}
  return fields, accuracy


def _selection_line(report: dict) -> list[str]:
  """One line saying which search state the jackpot is, and whether the search beat its
  start on the held-out images; none for reports written before selection existed."""
  search = report["search"]
  if "selected_step" not in search:
    return []
  step = search["selected_step"]
  line = (f"- jackpot: {'the start (step 0)' if step == 0 else f'step {step}'}, chosen by "
          f"`search.selected_on={search['selected_on']}`")
  if search["beat_start"] is not None:
    line += (f"; held out {_pct(report['holdout']['jackpot'])} against the start's "
             f"{_pct(search['start_holdout_accuracy'])}: the search "
             f"{'beat' if search['beat_start'] else 'did not beat'} its start")
  return [line]


def _pct(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}%"


def _plan_label(search: dict) -> str:
  pattern = search.get("pattern", "unstructured")
  return search["sparsity_plan"] if pattern == "unstructured" else f"N:M {pattern}"


def _data_lines(report: dict) -> list[str]:
  """The data bullet: image shape and preprocessing (none in reports from before them)."""
  data = report.get("data")
  if data is None:
    return []
  shape = "x".join(map(str, data["image_shape"]))
  return [f"- data: {shape} images; {resolved_preprocessing.summary(data['preprocessing'])}"]


def render_markdown(report: dict) -> str:
  """A readable summary: accuracies, sparsity under each convention, per-layer table."""
  accuracy, sparsity, search = report["accuracy"], report["sparsity"], report["search"]
  lines = [
      f"# Lottery jackpot: {report['model']} on {report['dataset']}",
      "",
      f"- checkpoint: `{report['checkpoint']}`",
      *_data_lines(report),
      f"- target sparsity: {_pct(report['target_sparsity'])} of the weights the plan pools "
      f"(plan `{_plan_label(search)}`, scores `{search['score_init']}`)",
      f"- search: {search['steps']} steps, {search['epochs']:.3g} epochs, "
      f"{search['wall_seconds']:.1f} s, {search.get('dtype', 'float32')} compute"
      + ("" if search.get("goal_reached_at") is None else
         f" (ended early: within eval.stop_within_dense of dense; "
         f"{search['planned_steps']} planned)"),
      *_selection_line(report),
      "",
      f"| accuracy on the {report.get('accuracy_split', 'test')} split, measured once at the "
      "end | top-1 |",
      "|---|---|",
  ]
  recalibrated = (f"magnitude-pruned, BN statistics re-estimated on "
                  f"{report.get('recalibration_images', 0)} training images")
  for key, label in (("dense", "dense (pre-trained)"),
                     ("magnitude", "magnitude-pruned (initial mask), dense BN statistics (stale)"),
                     ("magnitude_recalibrated", recalibrated),
                     ("wanda", f"Wanda ({report.get('wanda_images', 0)} images), dense BN "
                      "statistics (stale)"),
                     ("wanda_recalibrated", "Wanda, BN statistics re-estimated"),
                     ("jackpot", "jackpot (searched mask)"), ("tuned", "jackpot + weight tuning")):
    if accuracy.get(key) is not None:
      lines.append(f"| {label} | {_pct(accuracy[key])} |")
  holdout = report.get("holdout", {})
  if holdout.get("images"):
    lines += ["", f"Evaluations during the search, the choice of when to stop and of the "
              f"jackpot (`{search.get('selected_on')}`) used {holdout['images']} training "
              f"images held out of the search: dense {_pct(holdout.get('dense'))}, jackpot "
              f"{_pct(holdout.get('jackpot'))}."]
  if sparsity.get("nm_valid") is not None:
    unfit = ", ".join(sparsity.get("unfit_layers", [])) or "none"
    lines += ["", f"N:M pattern {sparsity['pattern']}: "
              f"{'every' if sparsity['nm_valid'] else 'NOT every'} one of "
              f"{sparsity['groups']} groups keeps at most N (counted from the masks); "
              f"left dense, input channels no multiple of M: {unfit}."]
  lines += ["", "| sparsity convention | counted from the masks |", "|---|---|"]
  for key in ("conv", "linear", "prunable", "all_weights"):
    if key not in sparsity:  # reports written before the linear count existed
      continue
    lines.append(f"| {key}: {sparsity['conventions'][key]} | {_pct(sparsity[key])} |")
  lines += ["", "| layer | shape | kept | sparsity |", "|---|---|---|---|"]
  for name, fraction in sparsity["per_layer"].items():
    layer = report.get("layers", {}).get(name, {})
    lines.append(f"| {name} | {layer.get('shape', '')} | {layer.get('kept', '')} | {_pct(fraction)} |")
  return "\n".join(lines) + "\n"


def write_reports(workdir: str | Path, report: dict) -> None:
  fileio.write_json(fileio.as_path(workdir, "--workdir") / "report.json", report)
  fileio.write_text(fileio.as_path(workdir, "--workdir") / "report.md", render_markdown(report))
