"""Exact top-k mask selection on a real network's layers: every method, timed, checked.

The search picks every masked layer's top-k after each optimizer step. On an accelerator
the step is ~100x faster than on this CPU, so a per-weight selection that is not a
streaming reduction can dominate it. This times each exact method of
`jackpot_jax.search.masking.TOPK_METHODS` (`lax.top_k` per layer, a full sort, a bisection on the
scores' bit patterns) over all masked layers of the model at once, checks that they return
the same masks bit for bit (on tie-heavy magnitude-init scores and on scores in mid-search),
times `lax.approx_max_k` for reference (not exact: its recall is printed), and prints each
time as a fraction of the model's dense training step on the same backend.

  python benchmarks/mask_selection.py [--model=resnet50 --image_size=224 --batch_size=32]
  python benchmarks/mask_selection.py --batch_size=256     # the GPU suite's batch
  python benchmarks/mask_selection.py --smoke        # tiny sizes, seconds

The masks come from --config's plan (default: uniform 90% over every conv, see
benchmarks/common.py). The last line of stdout is one JSON object.
"""

from __future__ import annotations

import functools
import json
import os
import platform

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from jax import lax

from jackpot_jax.search import masking

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 224, "input height and width of the dense step")
flags.DEFINE_integer("channels", 3, "input channels")
flags.DEFINE_integer("warmup", 1, "untimed rounds after compilation")
flags.DEFINE_integer("repeats", 5, "timed rounds; the median is reported")
flags.DEFINE_bool("smoke", False, "tiny sizes (resnet8, 8x8, batch 4) to check it runs")
flags.DEFINE_float("approx_recall_target", 0.95, "recall_target of lax.approx_max_k")

# The dense step's batch unless --batch_size says otherwise: ResNet-50's at 224x224 in the
# issue's CPU figures.
_DENSE_BATCH = 32

# Scores in mid-search: the magnitude init's two values plus the small spread a few
# hundred optimizer steps give them.
_MID_SEARCH_SPREAD = 1e-3


def _approx_masks(rankings: list, keep_counts: list) -> list:
  """`lax.approx_max_k` per layer, scattered into masks (TPU's fast approximate top-k)."""
  masks = []
  for ranking, keep_count in zip(rankings, keep_counts):
    _, kept = lax.approx_max_k(ranking.reshape(-1), keep_count,
                               recall_target=FLAGS.approx_recall_target)
    masks.append(jnp.zeros(ranking.size, bool).at[kept].set(True))
  return masks


def _selectors(keep_counts: list) -> dict:
  """Each method as one jitted program over all masked layers."""
  selectors = {name: jax.jit(functools.partial(method, keep_counts=keep_counts))
               for name, method in masking.TOPK_METHODS.items()}
  selectors["approx_max_k"] = jax.jit(functools.partial(_approx_masks,
                                                        keep_counts=keep_counts))
  return selectors


def _flat(masks: list) -> np.ndarray:
  return np.concatenate([np.asarray(m).reshape(-1) for m in masks])


def _masked_layers(bench) -> tuple[list, list]:
  """The scores and keep counts of the layers the plan masks (top-k rules only)."""
  scores = jax.tree.leaves(bench.state.scores)
  rules = jax.tree.structure(bench.state.scores).flatten_up_to(bench.keep_counts)
  chosen = [(s, k) for s, k in zip(scores, rules)
            if isinstance(k, int) and 0 < k < s.size]
  if not chosen:
    raise ValueError("the plan masks no layer with a top-k rule; give a sparsity in (0, 1)")
  return [s for s, _ in chosen], [k for _, k in chosen]


def _platform_key() -> str:
  backend = jax.default_backend()
  return {"gpu": "cuda"}.get(backend, backend)


def main(argv):
  del argv
  if FLAGS.smoke:
    FLAGS.model, FLAGS.batch_size, FLAGS.image_size, FLAGS.repeats = "resnet8", 4, 8, 2
  elif FLAGS.model is None:
    FLAGS.model = "resnet50"
  if FLAGS.batch_size is None:
    FLAGS.batch_size = _DENSE_BATCH
  config = common.settings()
  if FLAGS.num_classes is None and config.model.name == "resnet50":
    config.model.num_classes = 1000
  shape = (config.search.batch_size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  bench = common.random_search(config, shape[1:], jax.random.PRNGKey(0))
  init_scores, keep_counts = _masked_layers(bench)
  noise = jax.random.split(jax.random.PRNGKey(1), len(init_scores))
  mid_scores = [s + _MID_SEARCH_SPREAD * jax.random.normal(key, s.shape)
                for s, key in zip(init_scores, noise)]
  selectors = _selectors(keep_counts)

  exact = [name for name in selectors if name in masking.TOPK_METHODS]
  reference = {label: _flat(selectors["top_k"](scores))
               for label, scores in (("init", init_scores), ("mid_search", mid_scores))}
  agree = all(np.array_equal(_flat(selectors[name](scores)), reference[label])
              for name in exact
              for label, scores in (("init", init_scores), ("mid_search", mid_scores)))
  approx = _flat(selectors["approx_max_k"](mid_scores))
  recall = float(np.sum(approx & reference["mid_search"]) / np.sum(reference["mid_search"]))

  rng = np.random.default_rng(0)
  batch = {"image": jnp.asarray(rng.normal(size=shape).astype(np.float32)),
           "label": jnp.asarray(rng.integers(0, config.model.num_classes, shape[0]),
                                jnp.int32)}
  dense_step, dense_state = common.dense_training(
      bench.model, bench.params, bench.batch_stats, bench.tx)

  def dense_round():
    nonlocal dense_state
    dense_state, metrics = dense_step(None, dense_state, batch)
    jax.block_until_ready(metrics)

  rounds = {"dense_step": dense_round}
  for name, select in selectors.items():
    rounds[name] = functools.partial(lambda s: jax.block_until_ready(s(mid_scores)), select)
  seconds = common.interleaved_medians(rounds, FLAGS.repeats, FLAGS.warmup)

  dense = seconds.pop("dense_step")
  fastest = min(exact, key=seconds.__getitem__)
  chosen = masking.TOPK_METHOD_BY_PLATFORM.get(_platform_key(), "bisection")
  print(f"{config.model.name}: {len(keep_counts)} masked layers, "
        f"{sum(s.size for s in init_scores):,} scores; dense step {dense * 1e3:.1f} ms "
        f"(batch {shape[0]}, {shape[1]}x{shape[2]}) on {jax.default_backend()}")
  for name, value in seconds.items():
    note = "exact" if name in exact else f"approximate, recall {recall:.4f}"
    print(f"  {name:>13}: {value * 1e3:9.2f} ms = {value / dense:.4f} of the dense step "
          f"({note})")
  print(f"  exact methods agree bit for bit: {agree}; fastest exact: {fastest}; "
        f"the search uses: {chosen}")
  result = {
      "model": config.model.name, "layers": len(keep_counts),
      "scores": int(sum(s.size for s in init_scores)),
      "keep_counts": int(sum(keep_counts)), "batch_size": shape[0], "input": list(shape[1:]),
      "backend": jax.default_backend(), "device": jax.devices()[0].device_kind,
      "machine": f"{platform.machine()}, {os.cpu_count()} cores",
      "dense_step_ms": round(dense * 1e3, 3),
      "methods": {name: {"ms": round(value * 1e3, 3),
                         "fraction_of_dense_step": round(value / dense, 5),
                         "exact": name in exact}
                  for name, value in seconds.items()},
      "approx_max_k_recall": round(recall, 5),
      "exact_methods_agree": bool(agree), "fastest_exact": fastest, "chosen": chosen,
  }
  print(json.dumps(result))


if __name__ == "__main__":
  common.main(main)
