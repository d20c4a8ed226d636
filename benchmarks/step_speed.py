"""Search-step speed: each framework's search step over its own dense step, and images/s.

jackpot_jax's search step adds a top-k per masked layer and W*M to a dense step (goal:
search/dense <= 1.05 for ResNet-20 at batch 128). `--torch` also times a straightforward
PyTorch search (jackpot_jax.testing.torch_search: the authors' per-layer host sort after
every step) and PyTorch's own dense step, on the same CPU threads, so the overheads can be
compared apart from the frameworks' different convolution speed.

  python benchmarks/step_speed.py --model=resnet20 --batch_size=128 --torch
"""

from __future__ import annotations

import functools
import json
import os
import platform
import time

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from absl import app, flags

from jackpot_jax import models, optim, scores as scores_lib, sparsity, steps

FLAGS = flags.FLAGS
flags.DEFINE_string("model", "resnet20", "registry name (--torch supports the CIFAR ResNets)")
flags.DEFINE_integer("batch_size", 128, "batch size")
flags.DEFINE_integer("image_size", 32, "input height and width")
flags.DEFINE_integer("channels", 3, "input channels")
flags.DEFINE_integer("num_classes", 10, "classes")
flags.DEFINE_float("sparsity", 0.9, "target conv sparsity")
flags.DEFINE_integer("warmup", 2, "untimed rounds after compilation")
flags.DEFINE_integer("repeats", 5, "timed rounds; the median round is reported")
flags.DEFINE_integer("steps_per_round", 10, "steps per timed round")
flags.DEFINE_bool("torch", False, "also time the PyTorch search and dense steps")


def _optimizer_config() -> ml_collections.ConfigDict:
  return ml_collections.ConfigDict(dict(optimizer="sgd", learning_rate=0.1, lr_schedule="cosine",
                                        momentum=0.9, nesterov=False, weight_decay=5e-4))


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


def jax_rounds(images: np.ndarray, labels: np.ndarray) -> dict:
  spec = models.get_model_spec(FLAGS.model)
  model = spec.build(num_classes=FLAGS.num_classes)
  batch = {"image": jnp.asarray(images), "label": jnp.asarray(labels)}
  rng = jax.random.PRNGKey(0)
  variables = model.init(rng, batch["image"][:2], train=False)
  params, batch_stats = variables["params"], variables["batch_stats"]
  plan = sparsity.build_sparsity_plan(params, sparsity=FLAGS.sparsity, method="uniform", spec=spec)
  keep_counts = plan.keep_counts()
  tx = optim.make_optimizer(_optimizer_config(), 1000)
  search = jax.jit(functools.partial(steps.search_step, model=model, keep_counts=keep_counts,
                                     tx=tx, bn_mode="recalibrate"), donate_argnums=(1,))
  state = steps.init_search_state(scores_lib.init_scores(params, plan, "magnitude", rng),
                                  keep_counts, batch_stats, tx, rng)
  dense = jax.jit(functools.partial(steps.dense_train_step, model=model, tx=tx),
                  donate_argnums=(0, 1, 2))
  dense_params, dense_opt_state = jax.tree.map(jnp.copy, params), tx.init(params)
  dense_stats = jax.tree.map(jnp.copy, batch_stats)

  def search_round():
    nonlocal state
    for _ in range(FLAGS.steps_per_round):
      state, metrics = search(params, state, batch)
    jax.block_until_ready(metrics)

  def dense_round():
    nonlocal dense_params, dense_opt_state, dense_stats
    for _ in range(FLAGS.steps_per_round):
      dense_params, dense_opt_state, dense_stats, loss = dense(
          dense_params, dense_opt_state, dense_stats, batch)
    jax.block_until_ready(loss)

  return {"jax_search": search_round, "jax_dense": dense_round}


def torch_rounds(images: np.ndarray, labels: np.ndarray) -> dict:
  import torch
  from jackpot_jax.testing import torch_search
  from jackpot_jax.testing.torch_models import CifarResNet
  torch.set_flush_denormal(True)  # without it PyTorch slows ~10x on denormal activations
  torch.set_num_threads(os.cpu_count() or 1)
  if not FLAGS.model.startswith("resnet") or FLAGS.model not in ("resnet20", "resnet32", "resnet56"):
    raise ValueError("--torch supports resnet20/32/56")
  depth = int(FLAGS.model[len("resnet"):])
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2)))
  y = torch.from_numpy(labels.astype(np.int64))
  torch.manual_seed(0)
  search_net = CifarResNet(depth, FLAGS.num_classes, in_channels=FLAGS.channels).train()
  convs = torch_search.attach_scores(search_net, FLAGS.sparsity)
  search_opt = torch.optim.SGD([c.scores for c in convs], lr=0.1, momentum=0.9,
                               weight_decay=5e-4)
  dense_net = CifarResNet(depth, FLAGS.num_classes, in_channels=FLAGS.channels).train()
  dense_opt = torch.optim.SGD(dense_net.parameters(), lr=0.1, momentum=0.9, weight_decay=5e-4)

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
  rng = np.random.default_rng(0)
  shape = (FLAGS.batch_size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  images = rng.normal(size=shape).astype(np.float32)
  labels = rng.integers(0, FLAGS.num_classes, FLAGS.batch_size).astype(np.int32)
  rounds = jax_rounds(images, labels)
  if FLAGS.torch:
    rounds.update(torch_rounds(images, labels))
  seconds = _median_step_seconds(rounds)
  result = {"model": FLAGS.model, "batch_size": FLAGS.batch_size, "input": list(shape[1:]),
            "sparsity": FLAGS.sparsity, "jax_backend": jax.default_backend(),
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "step_ms": {k: round(v * 1e3, 2) for k, v in seconds.items()},
            "images_per_s": {k: round(FLAGS.batch_size / v, 1) for k, v in seconds.items()},
            "jax_search_over_dense": round(seconds["jax_search"] / seconds["jax_dense"], 4)}
  if FLAGS.torch:
    result["torch_search_over_dense"] = round(seconds["torch_search"] / seconds["torch_dense"], 4)
    result["jax_over_torch_search_images_per_s"] = round(
        seconds["torch_search"] / seconds["jax_search"], 4)
  print(json.dumps(result))


if __name__ == "__main__":
  app.run(main)
