"""report.json (machine-readable, a contract) and report.md (a per-layer table for people)."""

from __future__ import annotations

from pathlib import Path

from jackpot_jax import fileio


def _pct(value: float | None) -> str:
  return "-" if value is None else f"{100 * value:.2f}%"


def render_markdown(report: dict) -> str:
  """A readable summary: accuracies, sparsity under each convention, per-layer table."""
  accuracy, sparsity, search = report["accuracy"], report["sparsity"], report["search"]
  lines = [
      f"# Lottery jackpot: {report['model']} on {report['dataset']}",
      "",
      f"- checkpoint: `{report['checkpoint']}`",
      f"- target sparsity: {_pct(report['target_sparsity'])} of the conv weights "
      f"(plan `{search['sparsity_plan']}`, scores `{search['score_init']}`)",
      f"- search: {search['steps']} steps, {search['epochs']:.3g} epochs, "
      f"{search['wall_seconds']:.1f} s"
      + ("" if search.get("goal_reached_at") is None else
         f" (ended early: within eval.stop_within_dense of dense; "
         f"{search['planned_steps']} planned)"),
      "",
      "| accuracy | top-1 |",
      "|---|---|",
  ]
  for key, label in (("dense", "dense (pre-trained)"), ("magnitude", "magnitude-pruned (initial mask)"),
                     ("jackpot", "jackpot (searched mask)"), ("tuned", "jackpot + weight tuning")):
    if accuracy.get(key) is not None:
      lines.append(f"| {label} | {_pct(accuracy[key])} |")
  lines += ["", "| sparsity convention | counted from the masks |", "|---|---|"]
  for key in ("conv", "prunable", "all_weights"):
    lines.append(f"| {key}: {sparsity['conventions'][key]} | {_pct(sparsity[key])} |")
  lines += ["", "| layer | shape | kept | sparsity |", "|---|---|---|---|"]
  for name, fraction in sparsity["per_layer"].items():
    layer = report.get("layers", {}).get(name, {})
    lines.append(f"| {name} | {layer.get('shape', '')} | {layer.get('kept', '')} | {_pct(fraction)} |")
  return "\n".join(lines) + "\n"


def write_reports(workdir: str | Path, report: dict) -> None:
  fileio.write_json(Path(workdir) / "report.json", report)
  fileio.write_text(Path(workdir) / "report.md", render_markdown(report))
