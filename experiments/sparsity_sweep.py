"""Sparsity sweep: jackpot vs magnitude-pruning accuracy from 50% to 98% sparsity.

The magnitude mask is reported twice: with the dense network's BatchNorm statistics
(stale) and with them re-estimated on eval.recalibration_images training images, the
fair baseline, since the search re-estimates the jackpot's statistics too. A model
without BatchNorm (a ViT) has no re-estimated baseline, and its sparsity is counted over
the masked linear layers rather than the convolutions.

  python experiments/sparsity_sweep.py --config=configs/default.py --output=results/sweep \
      [--epochs=1] [--config.data.name=image_folder:/data/flowers ...]

Each sparsity runs in its own sub-workdir of --output (a rerun resumes or reuses it) and
the script writes sweep.json, sweep.md and sweep.png. "jackpot's step" is the search step
the jackpot was selected at (search.selected_on); "0 (start)": the search did not beat
its starting mask.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from jackpot_jax import fileio

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "results/sweep", "output directory")
flags.DEFINE_list("sparsities", ["0.5", "0.7", "0.9", "0.95", "0.98"], "target conv sparsities")
flags.DEFINE_float("epochs", 1.0, "search epochs per sparsity")


def main(argv):
  del argv
  output = Path(FLAGS.output)
  rows = []
  for target in [float(s) for s in FLAGS.sparsities]:
    config = common.config_with({"search.sparsity": target, "search.num_epochs": FLAGS.epochs,
                                 "progress_bar": False})
    report = common.run(config, output / f"sparsity_{target:g}")
    accuracy = report["accuracy"]
    rows.append({"target": target, "conv_sparsity": report["sparsity"]["conv"],
                 "linear_sparsity": report["sparsity"].get("linear", 0.0),
                 "prunable_sparsity": report["sparsity"]["prunable"],
                 "dense": accuracy["dense"], "magnitude": accuracy["magnitude"],
                 "magnitude_recalibrated": accuracy["magnitude_recalibrated"],
                 "jackpot": accuracy["jackpot"], "steps": report["search"]["steps"],
                 "selected_step": report["search"]["selected_step"],
                 "wall_seconds": report["search"]["wall_seconds"]})
    print(f"sparsity {target:.2f}, accuracy (%): magnitude {common.pct(accuracy['magnitude'])} "
          f"(stale BN), {common.pct(accuracy['magnitude_recalibrated'])} (recalibrated)  "
          f"jackpot {common.pct(accuracy['jackpot'])}  dense {common.pct(accuracy['dense'])}")
  result = {**common.config_source(), "epochs": FLAGS.epochs,
            "machine": common.machine(), "rows": rows}
  fileio.write_json(output / "sweep.json", result)
  counted = "conv" if any(r["conv_sparsity"] for r in rows) else "linear"
  lines = [f"| {counted} sparsity (counted) | dense | magnitude, stale BN | magnitude, BN "
           "recalibrated | jackpot | search steps | jackpot's step | wall s |",
           "|---|---|---|---|---|---|---|---|"]
  lines += [f"| {r[counted + '_sparsity']:.4f} | {100 * r['dense']:.2f} | "
            f"{100 * r['magnitude']:.2f} | {common.pct(r['magnitude_recalibrated'])} | "
            f"{100 * r['jackpot']:.2f} | {r['steps']} | {common.selected_cell(r['selected_step'])} "
            f"| {r['wall_seconds']:.0f} |" for r in rows]
  fileio.write_text(output / "sweep.md", "\n".join(lines) + "\n")
  plt = common.pyplot()
  fig, ax = plt.subplots(figsize=(6.5, 4.5))
  xs = [100 * r[counted + "_sparsity"] for r in rows]
  ax.plot(xs, [100 * r["jackpot"] for r in rows], marker="o", label="jackpot (searched mask)")
  if all(r["magnitude_recalibrated"] is not None for r in rows):
    ax.plot(xs, [100 * r["magnitude_recalibrated"] for r in rows], marker="^",
            label="magnitude pruning, BN recalibrated")
  ax.plot(xs, [100 * r["magnitude"] for r in rows], marker="s",
          label="magnitude pruning" + (", stale BN" if counted == "conv" else ""))
  ax.axhline(100 * rows[0]["dense"], color="gray", linestyle="--", label="dense")
  ax.set_xlabel(f"{counted} sparsity (%)")
  ax.set_ylabel("top-1 accuracy (%)")
  ax.set_title(f"{config.model.name} on {config.data.name}, {FLAGS.epochs:g} search epoch(s)")
  ax.legend()
  fig.tight_layout()
  common.save_figure(fig, output / "sweep.png")
  print(f"wrote {output}/sweep.{{json,md,png}}")


if __name__ == "__main__":
  common.main(main)
