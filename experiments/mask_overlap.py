"""Mask overlap: how much of the searched jackpot each pruning criterion would keep.

Run after a search; it reads the jackpot from the workdir's latest checkpoint, computes the
masks of magnitude, random, SNIP, GraSP, SynFlow and Wanda (its score ranked like the
others: per layer, or per N:M group) at the same keep counts on the same
pre-trained weights, and writes overlap.json, overlap.md and overlap.png to --output.

  python experiments/mask_overlap.py --workdir=workdirs/default --output=results/overlap \
      [--config.eval.batch_size=N --config.data.data_dir=DIR ...]

Like `jackpot evaluate`, it reads the workdir's saved config; --config.a.b overrides may
change how it runs, not what was searched.
"""

from __future__ import annotations

import itertools
import sys
from pathlib import Path

from absl import flags

from jackpot_jax import data as data_lib, entrypoint, fileio
from jackpot_jax.run import parallel, job
from jackpot_jax.baselines import criteria, overlap

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("workdir", None, "a workdir holding a finished search", required=True)
flags.DEFINE_string("output", "results/overlap", "directory for overlap.{json,md,png}")
flags.DEFINE_integer("batches", 4,
                     "training batches averaged for SNIP and GraSP gradients and Wanda norms")


def render_table(result: dict) -> str:
  names = list(result["overall"])
  lines = ["| layer | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
  lines.append("| **overall** | " + " | ".join(f"**{result['overall'][n]:.3f}**" for n in names) + " |")
  for layer in result["per_layer"][names[0]]:
    lines.append(f"| {layer} | " + " | ".join(f"{result['per_layer'][n][layer]:.3f}" for n in names) + " |")
  return "\n".join(lines) + "\n"


def plot(result: dict, path: Path) -> None:
  plt = common.pyplot()
  names = list(result["overall"])
  layers = list(result["per_layer"][names[0]])
  fig, (left, right) = plt.subplots(1, 2, figsize=(14, 4.5), gridspec_kw={"width_ratios": [1, 4]})
  left.bar(names, [result["overall"][n] for n in names], color="tab:blue")
  left.set_ylabel("overlap with the jackpot mask")
  left.set_ylim(0, 1)
  left.set_title("overall")
  left.tick_params(axis="x", rotation=45)
  for name in names:
    right.plot(range(len(layers)), [result["per_layer"][name][l] for l in layers], marker="o",
               label=name)
  right.set_xticks(range(len(layers)), layers, rotation=90, fontsize=7)
  right.set_ylim(0, 1)
  right.set_title("per layer")
  right.legend()
  fig.suptitle(f"{result['model']} on {result['dataset']}, {100 * result['target_sparsity']:.0f}% "
               "conv sparsity: criterion masks vs searched jackpot")
  fig.tight_layout()
  common.save_figure(fig, path)
  plt.close(fig)


def main(argv):
  del argv
  setup, state, _ = job.load_workdir(FLAGS.workdir, entrypoint.split_overrides(sys.argv)[1])
  config = setup.config
  batches = data_lib.make_train_iterator(setup.spec.data, batch_size=config.search.batch_size,
                                         seed=config.search.seed + 7)
  sample = [parallel.put_batch(b, setup.mesh) for b in itertools.islice(batches, FLAGS.batches)]
  per_layer, overall = {}, {}
  for name in criteria.criterion_names():
    masks = criteria.criterion_masks(
        name, model=setup.model, params=setup.params, batch_stats=setup.batch_stats,
        plan=setup.plan, batches=sample, input_shape=setup.data_info.image_shape)
    result = overlap.mask_overlap(masks, state.masks)
    overall[name], per_layer[name] = result["overall"], result["per_layer"]
    print(f"{name:10s} overlap with the jackpot: {result['overall']:.4f}")
  result = {"model": config.model.name, "dataset": config.data.name,
            "target_sparsity": config.search.sparsity, "search_steps": int(state.step),
            "machine": common.machine(),
            "overall": overall, "per_layer": per_layer}
  output = Path(FLAGS.output)
  fileio.write_json(output / "overlap.json", result)
  fileio.write_text(output / "overlap.md", render_table(result))
  plot(result, output / "overlap.png")
  print(f"wrote {output}/overlap.{{json,md,png}}")


if __name__ == "__main__":
  entrypoint.run(main, parse=lambda argv: entrypoint.parse_flags(argv, workdir_overrides=True))
