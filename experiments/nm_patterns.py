"""N:M jackpots against the N:M baselines: dense, magnitude N:M, Wanda N:M, jackpot.

  python experiments/nm_patterns.py --config=configs/default.py --output=results/nm \
      [--patterns=2:4,4:8] [--epochs=1,4] [--config.data.name=...]

Each (pattern, search length) is a whole search with its own schedule, in its own
sub-workdir of --output (a rerun resumes or reuses it). The baselines are the same masks
over the same frozen weights, reported with the dense network's BN statistics and with
them re-estimated, as the jackpot's are during the search. `gap_recovered` is
(jackpot - magnitude) / (dense - magnitude) against the re-estimated magnitude N:M mask:
MaskLLM's goal is 0.8 after one epoch. "jackpot's step" is the search step the jackpot was
selected at (search.selected_on); "0 (start)": the search did not beat the mask it started
from. Writes nm.json and nm.md.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from jackpot_jax import fileio

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "results/nm", "output directory")
flags.DEFINE_list("patterns", ["2:4"], "N:M patterns to search")
flags.DEFINE_list("epochs", ["1", "4"], "search lengths in epochs, one search each")

_COLUMNS = ("dense", "magnitude", "magnitude_recalibrated", "wanda", "wanda_recalibrated",
            "jackpot")


def _gap_recovered(accuracy: dict) -> float | None:
  baseline = accuracy["magnitude_recalibrated"]
  if baseline is None:
    baseline = accuracy["magnitude"]
  gap = accuracy["dense"] - baseline
  return None if gap <= 0 else (accuracy["jackpot"] - baseline) / gap


def main(argv):
  del argv
  output = Path(FLAGS.output)
  rows = []
  for pattern in FLAGS.patterns:
    for epochs in [float(e) for e in FLAGS.epochs]:
      config = common.config_with({"search.pattern": pattern, "search.num_epochs": epochs,
                                   "progress_bar": False})
      report = common.run(config, output / f"pattern_{pattern.replace(':', '_')}_{epochs:g}ep")
      accuracy = report["accuracy"]
      row = {"pattern": pattern, "epochs": epochs, **{k: accuracy[k] for k in _COLUMNS},
             "gap_recovered": _gap_recovered(accuracy),
             "nm_valid": report["sparsity"]["nm_valid"],
             "unfit_layers": report["sparsity"]["unfit_layers"],
             "prunable_sparsity": report["sparsity"]["prunable"],
             "steps": report["search"]["steps"],
             "selected_step": report["search"]["selected_step"],
             "wall_seconds": report["search"]["wall_seconds"]}
      rows.append(row)
      bn = "_recalibrated" if row["magnitude_recalibrated"] is not None else ""
      print(f"{pattern} {epochs:g} epoch(s): dense {common.pct(row['dense'])} magnitude "
            f"{common.pct(row['magnitude' + bn])} wanda {common.pct(row['wanda' + bn])} "
            f"jackpot {common.pct(row['jackpot'])} "
            f"({'BN re-estimated' if bn else 'no BN statistics: as is'} baselines)")
  result = {**common.config_source(), "machine": common.machine(), "rows": rows}
  fileio.write_json(output / "nm.json", result)
  lines = ["| pattern | search epochs | dense | magnitude, stale BN | magnitude, BN re-estimated "
           "| Wanda, stale BN | Wanda, BN re-estimated | jackpot | gap recovered | "
           "pattern valid | steps | jackpot's step | wall s |", "|---" * 13 + "|"]
  for r in rows:
    recovered = "-" if r["gap_recovered"] is None else f"{r['gap_recovered']:.2f}"
    lines.append(f"| {r['pattern']} | {r['epochs']:g} | "
                 + " | ".join(common.pct(r[k]) for k in _COLUMNS)
                 + f" | {recovered} | {r['nm_valid']} | {r['steps']} | "
                 f"{common.selected_cell(r['selected_step'])} | {r['wall_seconds']:.0f} |")
  fileio.write_text(output / "nm.md", "\n".join(lines) + "\n")
  print(f"wrote {output}/nm.{{json,md}}")


if __name__ == "__main__":
  common.main(main)
