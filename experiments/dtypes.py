"""The same search in float32 and in bfloat16 compute: accuracy and speed side by side.

  python experiments/dtypes.py --config=configs/default.py --output=results/dtype \
      [--dtypes=float32,bfloat16] [--epochs=0.3] [--config.data.name=...]

Each dtype is a whole search (`model.dtype`) from the same scores and batches, in its own
sub-workdir of --output (a rerun resumes or reuses it). Only the network's activations and
masked kernels change dtype; scores, their optimizer state and BatchNorm statistics stay
float32. Writes dtype.json and dtype.md; the gap is each dtype's jackpot accuracy minus
the first dtype's.
"""

from __future__ import annotations

from pathlib import Path

from absl import flags

from jackpot_jax import fileio

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "results/dtype", "output directory")
flags.DEFINE_list("dtypes", ["float32", "bfloat16"], "model.dtype values, one search each")
flags.DEFINE_float("epochs", 0.3, "search length in epochs")


def main(argv):
  del argv
  output = Path(FLAGS.output)
  rows = []
  for dtype in FLAGS.dtypes:
    config = common.config_with({"model.dtype": dtype, "search.num_epochs": FLAGS.epochs,
                                 "progress_bar": False})
    report = common.run(config, output / f"{dtype}_{FLAGS.epochs:g}ep")
    row = {"dtype": report["search"]["dtype"], "epochs": report["search"]["epochs"],
           "dense": report["accuracy"]["dense"], "jackpot": report["accuracy"]["jackpot"],
           "steps": report["search"]["steps"],
           "wall_seconds": report["search"]["wall_seconds"]}
    row["gap_to_first"] = row["jackpot"] - (rows[0] if rows else row)["jackpot"]
    rows.append(row)
    print(f"{dtype}: jackpot {common.pct(row['jackpot'])}% (dense {common.pct(row['dense'])}%), "
          f"{row['steps']} steps in {row['wall_seconds']:.0f} s")
  result = {**common.config_source(), "machine": common.machine(), "rows": rows}
  fileio.write_json(output / "dtype.json", result)
  lines = ["| compute dtype | search epochs | dense | jackpot | jackpot minus first, points "
           "| steps | search wall s |", "|---" * 7 + "|"]
  for r in rows:
    lines.append(f"| {r['dtype']} | {r['epochs']:.3g} | {common.pct(r['dense'])} | "
                 f"{common.pct(r['jackpot'])} | {100 * r['gap_to_first']:+.2f} | {r['steps']} | "
                 f"{r['wall_seconds']:.0f} |")
  fileio.write_text(output / "dtype.md", "\n".join(lines) + "\n")
  print(f"wrote {output}/dtype.{{json,md}}")


if __name__ == "__main__":
  common.main(main)
