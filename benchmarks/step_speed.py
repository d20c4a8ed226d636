"""Search-step speed: each framework's search step over its own dense step, and images/s.

jackpot_jax's search step adds a top-k per masked layer and W*M to a dense step (goal:
search/dense <= 1.05 for ResNet-20 at batch 128). `--torch` also times a straightforward
PyTorch search (jackpot_jax.torch_reference.torch_search: the authors' per-layer host sort after
every step) and PyTorch's own dense step, on the same CPU threads, so the overheads can be
compared apart from the frameworks' different convolution speed.

  python benchmarks/step_speed.py --model=resnet20 --batch_size=128 --torch \
      [--config=configs/default.py --config.search.sparsity=0.95 ...]

The search settings come from --config (see benchmarks/common.py).
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from jackpot_jax import steps

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 32, "input height and width")
flags.DEFINE_integer("channels", 3, "input channels")
flags.DEFINE_integer("warmup", 2, "untimed rounds after compilation")
flags.DEFINE_integer("repeats", 5, "timed rounds; the median round is reported")
flags.DEFINE_integer("steps_per_round", 10, "steps per timed round")
flags.DEFINE_bool("torch", False, "also time the PyTorch search and dense steps")


def _median_step_seconds(rounds: dict) -> dict:
  """Runs the named rounds interleaved, so drifting machine load hits all alike."""
  for _ in range(FLAGS.warmup):
    for run_round in rounds.values():
      run_round()
  times = {name: [] for name in rounds}
  for _ in range(FLAGS.repeats):
    for name, run_round in rounds.items():
      start = time.perf_counter()
      run_round()
      times[name].append((time.perf_counter() - start) / FLAGS.steps_per_round)
  return {name: float(np.median(values)) for name, values in times.items()}


def jax_rounds(config, images: np.ndarray, labels: np.ndarray) -> dict:
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  bench = common.random_search(config, images.shape[1:], jax.random.PRNGKey(0))
  params, state = bench.params, bench.state
  search = jax.jit(bench.step, donate_argnums=(1,))
  # Dense training of the same network: the tuning step without a mask.
  dense = jax.jit(functools.partial(steps.tune_step, model=bench.model, tx=bench.tx),
                  donate_argnums=(1,))
  dense_state = steps.TuneState(step=jnp.zeros((), jnp.int32),
                                params=jax.tree.map(jnp.copy, params),
                                opt_state=bench.tx.init(params),
                                batch_stats=jax.tree.map(jnp.copy, bench.batch_stats))

  def search_round():
    nonlocal state
    for _ in range(FLAGS.steps_per_round):
      state, metrics = search(params, state, batch)
    jax.block_until_ready(metrics)

  def dense_round():
    nonlocal dense_state
    for _ in range(FLAGS.steps_per_round):
      dense_state, metrics = dense(None, dense_state, batch)
    jax.block_until_ready(metrics)

  return {"jax_search": search_round, "jax_dense": dense_round}


def torch_rounds(config, images: np.ndarray, labels: np.ndarray) -> dict:
  import torch
  from jackpot_jax.torch_reference import torch_search
  from jackpot_jax.torch_reference.torch_models import CifarResNet
  torch.set_flush_denormal(True)  # without it PyTorch slows ~10x on denormal activations
  torch.set_num_threads(os.cpu_count() or 1)
  if config.model.name not in ("resnet20", "resnet32", "resnet56"):
    raise ValueError("--torch supports resnet20/32/56")
  depth = int(config.model.name[len("resnet"):])
  num_classes, search = config.model.num_classes, config.search
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  y = torch.from_numpy(labels.astype(np.int64))
  torch.manual_seed(0)
  search_net = CifarResNet(depth, num_classes, in_channels=FLAGS.channels).train()
  convs = torch_search.attach_scores(search_net, search.sparsity)
  sgd = dict(lr=search.learning_rate, momentum=search.momentum, weight_decay=search.weight_decay)
  search_opt = torch.optim.SGD([c.scores for c in convs], **sgd)
  dense_net = CifarResNet(depth, num_classes, in_channels=FLAGS.channels).train()
  dense_opt = torch.optim.SGD(dense_net.parameters(), **sgd)

  def search_round():
    for _ in range(FLAGS.steps_per_round):
      loss = torch.nn.functional.cross_entropy(search_net(x), y)
      search_opt.zero_grad(set_to_none=True)
      loss.backward()
      search_opt.step()
      torch_search.update_masks(convs)

  def dense_round():
    for _ in range(FLAGS.steps_per_round):
      loss = torch.nn.functional.cross_entropy(dense_net(x), y)
      dense_opt.zero_grad(set_to_none=True)
      loss.backward()
      dense_opt.step()

  return {"torch_search": search_round, "torch_dense": dense_round}


def main(argv):
  del argv
  config = common.settings()
  batch_size, num_classes = config.search.batch_size, config.model.num_classes
  rng = np.random.default_rng(0)
  shape = (batch_size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  images = rng.normal(size=shape).astype(np.float32)
  labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
  rounds = jax_rounds(config, images, labels)
  if FLAGS.torch:
    rounds.update(torch_rounds(config, images, labels))
  seconds = _median_step_seconds(rounds)
  result = {"model": config.model.name, "batch_size": batch_size, "input": list(shape[1:]),
            "sparsity": config.search.sparsity, "jax_backend": jax.default_backend(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "step_ms": {k: round(v * 1e3, 2) for k, v in seconds.items()},
            "images_per_s": {k: round(batch_size / v, 1) for k, v in seconds.items()},
            "jax_search_over_dense": round(seconds["jax_search"] / seconds["jax_dense"], 4)}
  if FLAGS.torch:
    result["torch_search_over_dense"] = round(seconds["torch_search"] / seconds["torch_dense"], 4)
    result["jax_over_torch_search_images_per_s"] = round(
        seconds["torch_search"] / seconds["jax_search"], 4)
  print(json.dumps(result))


if __name__ == "__main__":
  common.main(main)
