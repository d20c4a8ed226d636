"""Language-model jackpots against the one-shot baselines: perplexity after several search
budgets, with and without distillation, from each start.

  python experiments/lm_jackpots.py --config=configs/llm_tiny.py --output=results/lm_24 \
      [--budgets=0.5,1,2] [--starts=magnitude,wanda,sparsegpt] [--distill=0,0.5] \
      [--config.a.b=value ...]

Every (start, distillation weight, budget) is one whole `jackpot search` with its own
schedule over that many epochs, in its own sub-workdir of --output; a rerun reuses every
run whose report.json exists. Dense and the one-shot baselines (magnitude, Wanda, SparseGPT
with and without its weight update) are measured by the first run and copied to the others
(their `baselines.json` and masks), so each is computed once. The target is the config's
(search.pattern, or search.sparsity unstructured).

"gap closed" is the share of SparseGPT-with-update's perplexity gap to dense that the
jackpot closes: (SparseGPT updated - jackpot) / (SparseGPT updated - dense); 1 is dense,
0 SparseGPT's own figure, below 0 worse than it. Writes results.json and results.md.
"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

from absl import flags

from jackpot_jax import fileio
from jackpot_jax.run import lm_masks, lm_search

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("output", "results/lm_jackpots", "output directory")
flags.DEFINE_list("budgets", ["0.5", "1", "2"], "search budgets (epochs), each a whole search")
flags.DEFINE_list("starts", ["magnitude", "wanda", "sparsegpt"], "search.score_init values")
flags.DEFINE_list("distill", ["0", "0.5"], "search.distill_weight values")

BASELINES = ("magnitude", "wanda", "sparsegpt", "sparsegpt_updated")


def _run_name(start: str, distill: float, epochs: float) -> str:
  return f"{start}_kd{distill:g}_e{epochs:g}"


def _share_baselines(source: Path, target: Path) -> None:
  """Copies a finished run's baseline measurement (baselines.json and the baselines'
  masks) into a new run's workdir, so that it does not measure them again."""
  if (target / lm_search.BASELINES_FILE).exists() or not (
      source / lm_search.BASELINES_FILE).exists():
    return
  (target / lm_masks.MASKS_FOLDER).mkdir(parents=True, exist_ok=True)
  for method in lm_masks.saved_methods(source):
    if method != lm_search.JACKPOT:
      name = f"{method}.npz"
      shutil.copyfile(source / lm_masks.MASKS_FOLDER / name, target / lm_masks.MASKS_FOLDER / name)
  shutil.copyfile(source / lm_search.BASELINES_FILE, target / lm_search.BASELINES_FILE)


def gap_closed(report: dict) -> float:
  perplexity = report["perplexity"]
  gap = perplexity["sparsegpt_updated"] - perplexity["dense"]
  return (perplexity["sparsegpt_updated"] - perplexity["jackpot"]) / gap


def _row(report: dict, start: str, distill: float, epochs: float) -> dict:
  search = report["search"]
  return {"start": start, "distill_weight": distill, "epochs": epochs,
          "steps": search["steps"], "tokens": search["steps"] * search["tokens_per_step"],
          "jackpot": report["perplexity"]["jackpot"], "gap_closed": gap_closed(report),
          "selected_step": search["selected"]["step"] if search["selected"] else search["steps"],
          "search_seconds": search["wall_seconds"]}


def _markdown(rows: list[dict], first: dict) -> str:
  perplexity, target = first["perplexity"], first["target"]
  lines = [f"# Language-model jackpots: {first['model']} at {target['pattern']} "
           f"({100 * target['sparsity']:.0f}%)", "",
           f"Perplexity on the {perplexity['protocol']['split']} split "
           f"({perplexity['protocol']['sequences']} x {perplexity['protocol']['seq_len']} tokens)"
           f"; machine: {common.machine()}.", "",
           "| weights | perplexity |", "|---|---|",
           f"| dense | {perplexity['dense']:.2f} |"]
  lines += [f"| {name} | {perplexity[name]:.2f} |" for name in BASELINES if name in perplexity]
  lines += ["", "| start | distill w | epochs | steps | jackpot | gap closed | selected step "
            "| search s |", "|---|---|---|---|---|---|---|---|"]
  for row in rows:
    lines.append(f"| {row['start']} | {row['distill_weight']:g} | {row['epochs']:g} | "
                 f"{row['steps']} | {row['jackpot']:.2f} | {100 * row['gap_closed']:.0f}% | "
                 f"{common.selected_cell(row['selected_step'])} | "
                 f"{row['search_seconds']:.0f} |")
  return "\n".join(lines) + "\n"


def main(argv):
  del argv
  output = Path(FLAGS.output)
  output.mkdir(parents=True, exist_ok=True)
  rows, reports, first_workdir = [], [], None
  for start in FLAGS.starts:
    for distill in map(float, FLAGS.distill):
      for epochs in map(float, FLAGS.budgets):
        workdir = output / _run_name(start, distill, epochs)
        saved = workdir / "report.json"
        if saved.exists():
          report = json.loads(saved.read_text())
        else:
          workdir.mkdir(parents=True, exist_ok=True)
          if first_workdir is not None:
            _share_baselines(first_workdir, workdir)
          report = common.run(common.config_with({
              "search.score_init": start, "search.distill_weight": distill,
              "search.num_epochs": epochs}), workdir)
        first_workdir = first_workdir or workdir
        reports.append(report)
        rows.append(_row(report, start, distill, epochs))
        print(f"{workdir.name}: jackpot {report['perplexity']['jackpot']:.2f} "
              f"(gap closed {100 * rows[-1]['gap_closed']:.0f}%)", flush=True)
  fileio.write_json(output / "results.json", {"source": common.config_source(),
                                               "machine": common.machine(), "runs": rows,
                                               "perplexity": reports[0]["perplexity"]})
  fileio.write_text(output / "results.md", _markdown(rows, reports[0]))
  print(_markdown(rows, reports[0]))


if __name__ == "__main__":
  common.main(main)
