"""The language-model report of `jackpot baselines` and `jackpot search`: report.json
(machine-readable, its keys a contract), report.md (a table for people) and the summary
line, built by pure functions from what `lm_baselines` and `lm_search` measured.

report.json's `perplexity` holds `dense`, each method's mask on the original weights
under its name, `<name>_updated` for a method that also updates the weights (SparseGPT),
and `jackpot`, the searched mask's (null from `baselines`), with the protocol they were
measured by. A search's report also has `search` (its start, settings, held-out history
and selected step) and the jackpot's masks counted under `masks.jackpot`.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any, Mapping

import numpy as np
from flax import traverse_util

from jackpot_jax import fileio
from jackpot_jax.baselines.layer_masks import Sparsity
from jackpot_jax.models.wrapper import Maskable
from jackpot_jax.run.perplexity import Perplexity
from jackpot_jax.search import masking
from jackpot_jax.search.masking import NMPattern

PyTree = Any
UPDATED = "_updated"
JACKPOT = "jackpot"
# How the summary line and report.md name a registered method; others go by their name.
LABELS = {"magnitude": "magnitude", "wanda": "Wanda", "sparsegpt": "SparseGPT"}


@dataclasses.dataclass(frozen=True)
class MethodOutcome:
  """One baseline's measurements.

  Attributes:
    perplexity: its masks on the original weights.
    updated: its masks with the weights it updated; None for a method that updates none.
    counted: `count_masks` of its masks.
    seconds: wall seconds of "prune", "perplexity" and, with updated weights,
      "perplexity_updated".
  """

  perplexity: Perplexity
  updated: Perplexity | None
  counted: dict
  seconds: dict[str, float]


@dataclasses.dataclass(frozen=True)
class JackpotOutcome:
  """The searched masks' measurements.

  Attributes:
    perplexity: the selected jackpot on the original weights.
    counted: `count_masks` of its masks.
    seconds: wall seconds of the "search" and the "perplexity".
    search: the report's `search` section (`lm_search`).
  """

  perplexity: Perplexity
  counted: dict
  seconds: dict[str, float]
  search: dict


def target_description(target: Sparsity) -> dict:
  """{"pattern": "N:M" or "unstructured", "sparsity": the fraction pruned}."""
  if isinstance(target, NMPattern):
    return {"pattern": str(target), "sparsity": 1.0 - target.density}
  return {"pattern": masking.UNSTRUCTURED, "sparsity": float(target)}


def _maskable_kernels(params: PyTree, maskable: Maskable) -> dict[tuple[str, ...], Any]:
  return {path: leaf for path, leaf in traverse_util.flatten_dict(params).items()
          if maskable(path, tuple(np.shape(leaf)))}


def describe_model(name: str, hf_config: Mapping[str, Any], params: PyTree,
                   maskable: Maskable) -> dict:
  """{"name", "model_type", "parameters", "maskable_parameters", "maskable_layers"}."""
  kernels = _maskable_kernels(params, maskable)
  return {"name": name, "model_type": hf_config.get("model_type"),
          "parameters": sum(int(np.size(leaf)) for leaf in
                            traverse_util.flatten_dict(params).values()),
          "maskable_parameters": sum(int(np.size(kernel)) for kernel in kernels.values()),
          "maskable_layers": len(kernels)}


def _at_fraction(pruned: int, size: int, inputs: int, target: float) -> bool:
  """Whether a layer's pruned count is what `target` prunes of it, whatever the method's
  comparison groups (the layer, each output's inputs, blocks of inputs): at most
  target * size, and less than one weight per output below it."""
  return pruned <= target * size * (1 + 1e-9) and pruned > (target - 1.0 / inputs) * size


def count_masks(params: PyTree, masks: PyTree, maskable: Maskable, target: Sparsity) -> dict:
  """A method's masks counted and checked against the target, layer by layer.

  Returns:
    {"masked": weights pruned, "kept", "size" (of the maskable kernels), "sparsity",
     "layers": masked layers, "unmasked_layers": maskable layers without a mask,
     "at_target": every maskable layer masked at the target (N:M: exactly N of every M
       kept; unstructured: `_at_fraction`),
     "nm_valid": N:M: every group keeps at most N (None unstructured), "groups": groups
       checked, "per_layer": {layer: fraction pruned}}
  """
  flat_masks = traverse_util.flatten_dict(masks)
  per_layer, unmasked = {}, []
  masked = size = groups = 0
  at_target = nm_valid = True
  for path, kernel in _maskable_kernels(params, maskable).items():
    name = "/".join(path[:-1])
    if path not in flat_masks:
      unmasked.append(name)
      continue
    mask = np.asarray(flat_masks[path], bool)
    pruned = int(mask.size - np.count_nonzero(mask))
    masked, size = masked + pruned, size + mask.size
    per_layer[name] = pruned / mask.size
    if isinstance(target, NMPattern):
      counts = np.asarray(masking.nm_group_counts(mask, target.m))
      nm_valid = nm_valid and bool(np.all(counts <= target.n))
      at_target = at_target and bool(np.all(counts == target.n))
      groups += int(counts.size)
    else:
      at_target = at_target and _at_fraction(pruned, mask.size, np.shape(kernel)[-2], target)
  return {"masked": masked, "kept": size - masked, "size": size,
          "sparsity": masked / size if size else 0.0, "layers": len(per_layer),
          "unmasked_layers": unmasked, "at_target": at_target and not unmasked,
          "nm_valid": nm_valid if isinstance(target, NMPattern) else None, "groups": groups,
          "per_layer": per_layer}


def build_report(*, model: dict, checkpoint: str, dataset: str, target: Sparsity,
                 dense: Perplexity, outcomes: Mapping[str, MethodOutcome], protocol: dict,
                 calibration: dict, seconds: Mapping[str, float], environment: dict,
                 jackpot: JackpotOutcome | None = None) -> dict:
  """report.json's content (a search's with `jackpot`).

  Args:
    model: `describe_model`'s description.
    outcomes: each method's measurements, in the order run.
    protocol: `perplexity.describe` of the evaluation split.
    calibration: {"sequences", "seq_len", "tokens", "seed", "split", "batch_size"}.
    seconds: wall seconds of the steps outside the methods ("import", "dense", "total").
    environment: {"devices", "machine", "jax_version"}.
    jackpot: the searched masks' outcome; None for `jackpot baselines`.
  """
  perplexity = {"dense": dense.perplexity}
  for name, outcome in outcomes.items():
    perplexity[name] = outcome.perplexity.perplexity
    if outcome.updated is not None:
      perplexity[name + UPDATED] = outcome.updated.perplexity
  masks = {name: outcome.counted for name, outcome in outcomes.items()}
  wall_seconds = {**seconds, **{name: outcome.seconds for name, outcome in outcomes.items()}}
  report = {
      "command": "baselines" if jackpot is None else "search",
      "model": model["name"],
      "model_description": model,
      "checkpoint": checkpoint,
      "dataset": dataset,
      "target": target_description(target),
      # Without a search (`jackpot baselines`) there is no jackpot to measure.
      "perplexity": {**perplexity,
                     "jackpot": None if jackpot is None else jackpot.perplexity.perplexity,
                     "protocol": protocol},
      "masks": masks,
      "calibration": calibration,
      "wall_seconds": wall_seconds,
      **environment,
  }
  if jackpot is not None:
    masks[JACKPOT] = jackpot.counted
    wall_seconds[JACKPOT] = jackpot.seconds
    report["search"] = jackpot.search
  return report


def _label(name: str) -> str:
  return LABELS.get(name, name)


def _target_label(target: dict) -> str:
  if target["pattern"] == masking.UNSTRUCTURED:
    return f"{100 * target['sparsity']:.0f}% unstructured"
  return target["pattern"]


def _rows(report: dict) -> list[tuple[str, str, dict | None, str]]:
  """(label, perplexity key, masks counted, wall seconds) of each row after dense."""
  rows = []
  for name, counted in report["masks"].items():
    seconds = report["wall_seconds"][name]
    if name == JACKPOT:
      search = report["search"]
      rows.append((f"jackpot (searched from {_label(search['score_init'])}, "
                   f"{search['steps']} steps"
                   f"{', distilled' if search['distill_weight'] > 0 else ''})", name, counted,
                   f"{seconds['search']:.1f} + {seconds['perplexity']:.1f}"))
      continue
    updates = name + UPDATED in report["perplexity"]
    rows.append((f"{_label(name)}{' (mask alone)' if updates else ''}", name, counted,
                 f"{seconds['prune']:.1f} + {seconds['perplexity']:.1f}"))
    if updates:
      rows.append((f"{_label(name)} (with its weight update)", name + UPDATED, counted,
                   f"{seconds['perplexity_updated']:.1f}"))
  return rows


def _check_cell(counted: dict) -> str:
  if counted["nm_valid"] is not None:
    return f"{'yes' if counted['at_target'] else 'NO'} ({counted['groups']:,} groups)"
  return "yes" if counted["at_target"] else "NO"


def render_markdown(report: dict) -> str:
  """report.md: the setting in a few lines, then one row per perplexity."""
  model, target = report["model_description"], report["target"]
  protocol, calibration = report["perplexity"]["protocol"], report["calibration"]
  devices = report["devices"]
  lines = [
      f"# {'One-shot baselines' if report['command'] == 'baselines' else 'Jackpot search'}: "
      f"{model['name']} at {_target_label(target)}",
      "",
      f"- checkpoint: `{report['checkpoint']}` ({model['model_type']}, "
      f"{model['parameters']:,} parameters, {model['maskable_parameters']:,} in the "
      f"{model['maskable_layers']} maskable projections)",
      f"- target: {_target_label(target)}, {100 * target['sparsity']:.2f}% of every "
      "maskable projection",
      f"- calibration: {calibration['sequences']} searched training sequences of "
      f"{calibration['seq_len']} tokens (seed {calibration['seed']})",
      f"- perplexity: {protocol['protocol']} protocol over the {protocol['split']} split of "
      f"`{report['dataset']}`, {protocol['sequences']} sequences of {protocol['seq_len']} "
      f"tokens ({protocol['tokens']:,} predicted tokens)",
      f"- devices: {devices['count']} {devices['platform']} ({devices['kind']}); "
      f"{report['machine']['cpu']}, {report['machine']['cores']} cores; "
      f"{report['wall_seconds']['total']:.1f} s in all",
      "",
      "| weights | perplexity | sparsity (counted) | at the target | wall s (prune or "
      "search + perplexity) |",
      "|---|---|---|---|---|",
      f"| dense | {report['perplexity']['dense']:.3f} | 0.00% | - | "
      f"{report['wall_seconds']['dense']:.1f} |",
  ]
  for label, key, counted, seconds in _rows(report):
    lines.append(f"| {label} | {report['perplexity'][key]:.3f} | "
                 f"{100 * counted['sparsity']:.2f}% | {_check_cell(counted)} | {seconds} |")
  return "\n".join(lines) + "\n"


def summary_line(report: dict, workdir: str) -> str:
  """The last line `jackpot baselines` prints: every perplexity at the target."""
  parts = [f"dense {report['perplexity']['dense']:.2f}"]
  for label, key, _, _ in _rows(report):
    parts.append(f"{label} {report['perplexity'][key]:.2f}")
  protocol = report["perplexity"]["protocol"]
  return (f"perplexity at {_target_label(report['target'])} ({protocol['split']} split, "
          f"{protocol['sequences']} x {protocol['seq_len']} tokens): {', '.join(parts)}; "
          f"report: {workdir}/report.json")


def write_reports(workdir: str | Path, report: dict) -> None:
  """report.json and report.md, each written atomically."""
  folder = fileio.as_path(workdir, "--workdir")
  fileio.write_json(folder / "report.json", report)
  fileio.write_text(folder / "report.md", render_markdown(report))
