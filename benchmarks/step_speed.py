"""Search-step speed: each framework's search step over its own dense step, and images/s.

jackpot_jax's search step adds a top-k per masked layer and W*M to a dense step (goal:
search/dense <= 1.05 on this CPU, for ResNet-20 and ResNet-50 alike). `--torch` also times
a straightforward PyTorch search (torch_reference.torch_search: the authors'
per-layer sort after every step) and PyTorch's own dense step on the same device, so the
overheads can be compared apart from the frameworks' different convolution speed.

Steps run in rounds, one round of each kind per repeat, interleaved, so drifting machine
load hits every kind alike; the median round is reported. `--steps_per_round=0` (default)
sizes the rounds from the warm-up so one lasts about `--round_seconds`: ResNet-20 gets
many steps per round, ResNet-50 at 224x224 one, and the default run finishes in minutes.

  python benchmarks/step_speed.py --model=resnet20 --batch_size=128 --torch
  python benchmarks/step_speed.py --model=resnet50 --image_size=224 --batch_size=32 \
      --num_classes=1000 [--config.model.dtype=bfloat16] [--torch --torch_device=cuda]
  python benchmarks/step_speed.py --model=vgg19 --batch_size=128 --torch
  python benchmarks/step_speed.py --decoder=pretrained/llm_tiny --config=configs/llm_tiny.py \
      --batch_size=16 --seq_len=128

With --decoder (a Hugging Face decoder folder) the steps are the language-model search's
(2:4 or unstructured from --config, scores started at the magnitude mask), with and without
distillation from the dense decoder, against dense training of the decoder's weights with
the same optimizer, on one batch of random token ids.

The search settings come from --config (see benchmarks/common.py); `model.dtype` sets the
activation dtype of the JAX steps (PyTorch runs float32). The last line of stdout is one
JSON object.
"""

from __future__ import annotations

import functools
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags

from jackpot_jax.models import cifar_resnet
from jackpot_jax.run import parallel

import common

# torch_reference/ (the PyTorch baseline of --torch) is not installed: it lives beside benchmarks/.
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 32, "input height and width")
flags.DEFINE_integer("channels", 3, "input channels")
flags.DEFINE_integer("warmup", 1, "untimed rounds after compilation")
flags.DEFINE_integer("repeats", 5, "timed rounds of each kind (pairs); the median is reported")
flags.DEFINE_integer("steps_per_round", 0, "steps per timed round; 0 sizes rounds from the "
                     "warm-up to last about --round_seconds")
flags.DEFINE_float("round_seconds", 2.0, "target length of one round when steps_per_round=0")
flags.DEFINE_bool("torch", False, "also time the PyTorch search and dense steps")
flags.DEFINE_string("torch_device", "cpu", "device of the PyTorch steps: cpu | cuda")
flags.DEFINE_string("decoder", None, "a Hugging Face decoder folder: time the language-model "
                    "search instead of an image model's")
flags.DEFINE_integer("seq_len", 128, "--decoder: tokens per sequence")


def _step_once(rounds: dict) -> dict:
  """Seconds of one step of each kind (compiles on the first call)."""
  seconds = {}
  for name, run_round in rounds.items():
    start = time.perf_counter()
    run_round(1)
    seconds[name] = time.perf_counter() - start
  return seconds


def _median_step_seconds(rounds: dict) -> tuple[dict, int]:
  """Median seconds per step of each kind, and the steps per round used."""
  _step_once(rounds)  # compiles; never timed
  warm = _step_once(rounds)
  per_round = FLAGS.steps_per_round or max(
      1, math.ceil(FLAGS.round_seconds / max(max(warm.values()), 1e-6)))
  timed = {name: functools.partial(run_round, per_round) for name, run_round in rounds.items()}
  seconds = common.interleaved_medians(timed, FLAGS.repeats, max(FLAGS.warmup - 1, 0))
  return {name: value / per_round for name, value in seconds.items()}, per_round


def jax_rounds(config, images: np.ndarray, labels: np.ndarray) -> dict:
  """Search and dense rounds of `steps` JAX steps each, on one batch."""
  dtype = parallel.IMAGE_DTYPES[config.model.dtype]
  batch = {"image": jnp.asarray(images).astype(dtype), "label": jnp.asarray(labels)}
  bench = common.random_search(config, images.shape[1:], jax.random.PRNGKey(0))
  params, state = bench.params, bench.state
  search = jax.jit(bench.step, donate_argnums=(1,))
  dense, dense_state = common.dense_training(
      bench.model, bench.params, bench.batch_stats, bench.tx)

  def search_round(steps: int):
    nonlocal state
    for _ in range(steps):
      state, metrics = search(params, state, batch)
    jax.block_until_ready(metrics)

  def dense_round(steps: int):
    nonlocal dense_state
    for _ in range(steps):
      dense_state, metrics = dense(None, dense_state, batch)
    jax.block_until_ready(metrics)

  return {"jax_search": search_round, "jax_dense": dense_round}


def decoder_rounds(config, folder: str, tokens: np.ndarray) -> tuple[dict, dict]:
  """The language-model search step (plain and distilling) and dense training of the
  decoder, on one batch of tokens; with the decoder's description."""
  from jackpot_jax.baselines.llm_oneshot import prune_decoder
  from jackpot_jax.pytorch.hf_decoders import import_hf_decoder
  from jackpot_jax.run import lm_search, lm_spec
  from jackpot_jax.search import lm_steps, optim, steps
  model, params, _ = import_hf_decoder(folder)
  hf_config = json.loads((Path(folder) / "config.json").read_text())
  target = lm_spec.search_target(config.search)
  start = prune_decoder("magnitude", model, params, hf_config, tokens[:1], target).masks
  rules = lm_search.keep_counts(target, start)
  scores = lm_search.start_scores(start)
  tx = optim.make_optimizer(config.search, 1000)
  batch = {"tokens": jnp.asarray(tokens)}
  statics = dict(model=model, keep_counts=rules, tx=tx)
  kinds = {"jax_search": jax.jit(functools.partial(lm_steps.lm_search_step, **statics),
                                 donate_argnums=(1,)),
           "jax_search_distill": jax.jit(functools.partial(
               lm_steps.lm_search_step, distill_weight=0.5, distill_temperature=1.0,
               **statics), donate_argnums=(1,)),
           "jax_dense": jax.jit(functools.partial(lm_steps.lm_train_step, model=model, tx=tx),
                                donate_argnums=(1,))}
  # Each kind its own copy: the steps donate their state.
  states = {name: steps.init_search_state(jax.tree.map(jnp.copy, scores), rules, {}, tx)
            for name in kinds}
  states["jax_dense"] = steps.TuneState(step=jnp.zeros((), jnp.int32),
                                        params=jax.tree.map(jnp.copy, params),
                                        opt_state=tx.init(params), batch_stats={})
  frozen = {"jax_search": params, "jax_search_distill": params, "jax_dense": None}

  def round_of(name):
    def run_round(count: int):
      for _ in range(count):
        states[name], metrics = kinds[name](frozen[name], states[name], batch)
      jax.block_until_ready(metrics)
    return run_round

  size = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(params))
  masked = sum(int(np.size(leaf)) for leaf in jax.tree.leaves(start))
  return {name: round_of(name) for name in kinds}, {
      "decoder": folder, "model_type": hf_config.get("model_type"), "parameters": size,
      "masked_parameters": masked, "target": str(target)}


CIFAR_RESNETS = tuple(f"resnet{depth}" for depth in cifar_resnet.DEPTHS)


def _torch_model(name: str, num_classes: int):
  """The PyTorch twin of a registry model, in the same key layout."""
  from jackpot_jax.models.vgg_cifar import VGG19_LAYOUT
  from torch_reference import torch_models
  if name in CIFAR_RESNETS:
    return torch_models.CifarResNet(int(name[len("resnet"):]), num_classes,
                                    in_channels=FLAGS.channels)
  if name in ("resnet18", "resnet34", "resnet50"):
    return torch_models.torchvision_resnet(int(name[len("resnet"):]), num_classes)
  if name == "vgg19":
    return torch_models.AuthorsCifarVGG(VGG19_LAYOUT, num_classes, in_channels=FLAGS.channels)
  raise ValueError(f"--torch supports {', '.join(CIFAR_RESNETS)}, resnet18/34/50 and vgg19, "
                   f"not {name!r}")


def torch_rounds(config, images: np.ndarray, labels: np.ndarray) -> dict:
  """The PyTorch reference search (per-layer sort after every step) and dense training."""
  import torch
  from torch_reference import torch_search
  device = torch.device(FLAGS.torch_device)
  torch.set_flush_denormal(True)  # without it PyTorch slows ~10x on denormal activations
  if device.type == "cpu":
    torch.set_num_threads(os.cpu_count() or 1)
  search = config.search
  x = torch.from_numpy(np.ascontiguousarray(images.transpose(0, 3, 1, 2))).to(device)
  y = torch.from_numpy(labels.astype(np.int64)).to(device)
  torch.manual_seed(0)
  search_net = _torch_model(config.model.name, config.model.num_classes).train()
  convs = torch_search.attach_scores(search_net, search.sparsity)
  search_net.to(device)
  sgd = dict(lr=search.learning_rate, momentum=search.momentum, weight_decay=search.weight_decay)
  search_opt = torch.optim.SGD([c.scores for c in convs], **sgd)
  dense_net = _torch_model(config.model.name, config.model.num_classes).train().to(device)
  dense_opt = torch.optim.SGD(dense_net.parameters(), **sgd)

  def synchronize():
    if device.type == "cuda":
      torch.cuda.synchronize(device)

  def search_round(steps: int):
    for _ in range(steps):
      loss = torch.nn.functional.cross_entropy(search_net(x), y)
      search_opt.zero_grad(set_to_none=True)
      loss.backward()
      search_opt.step()
      torch_search.update_masks(convs)
    synchronize()

  def dense_round(steps: int):
    for _ in range(steps):
      loss = torch.nn.functional.cross_entropy(dense_net(x), y)
      dense_opt.zero_grad(set_to_none=True)
      loss.backward()
      dense_opt.step()
    synchronize()

  return {"torch_search": search_round, "torch_dense": dense_round}


def decoder_main(config) -> None:
  """--decoder: the language-model search's step over dense training, sequences/s."""
  batch_size = config.search.batch_size
  hf_config = json.loads((Path(FLAGS.decoder) / "config.json").read_text())
  tokens = np.random.default_rng(0).integers(
      0, hf_config["vocab_size"], (batch_size, FLAGS.seq_len)).astype(np.int32)
  rounds, described = decoder_rounds(config, FLAGS.decoder, tokens)
  seconds, per_round = _median_step_seconds(rounds)
  result = {**described, "batch_size": batch_size, "seq_len": FLAGS.seq_len,
            "optimizer": config.search.optimizer,
            "jax_backend": jax.default_backend(), "jax_device": jax.devices()[0].device_kind,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "load_average": round(os.getloadavg()[0], 2),
            "repeats": FLAGS.repeats, "steps_per_round": per_round,
            "step_ms": {k: round(v * 1e3, 2) for k, v in seconds.items()},
            "tokens_per_s": {k: round(batch_size * FLAGS.seq_len / v, 1)
                             for k, v in seconds.items()},
            "jax_search_over_dense": round(seconds["jax_search"] / seconds["jax_dense"], 4),
            "jax_distill_search_over_dense": round(
                seconds["jax_search_distill"] / seconds["jax_dense"], 4)}
  for name, value in seconds.items():
    print(f"{name:>18}: {value * 1e3:10.1f} ms/step  {batch_size * FLAGS.seq_len / value:9.1f} "
          "tokens/s")
  print(json.dumps(result))


def main(argv):
  del argv
  config = common.settings()
  if FLAGS.decoder:
    decoder_main(config)
    return
  batch_size, num_classes = config.search.batch_size, config.model.num_classes
  rng = np.random.default_rng(0)
  shape = (batch_size, FLAGS.image_size, FLAGS.image_size, FLAGS.channels)
  images = rng.normal(size=shape).astype(np.float32)
  labels = rng.integers(0, num_classes, batch_size).astype(np.int32)
  rounds = jax_rounds(config, images, labels)
  if FLAGS.torch:
    rounds.update(torch_rounds(config, images, labels))
  seconds, per_round = _median_step_seconds(rounds)
  result = {"model": config.model.name, "batch_size": batch_size, "input": list(shape[1:]),
            "dtype": config.model.dtype, "sparsity": config.search.sparsity,
            "jax_backend": jax.default_backend(), "jax_device": jax.devices()[0].device_kind,
            "machine": f"{platform.machine()}, {os.cpu_count()} cores",
            "repeats": FLAGS.repeats, "steps_per_round": per_round,
            "step_ms": {k: round(v * 1e3, 2) for k, v in seconds.items()},
            "images_per_s": {k: round(batch_size / v, 1) for k, v in seconds.items()},
            "jax_search_over_dense": round(seconds["jax_search"] / seconds["jax_dense"], 4)}
  if FLAGS.torch:
    result["torch_device"] = FLAGS.torch_device
    result["torch_search_over_dense"] = round(seconds["torch_search"] / seconds["torch_dense"], 4)
    result["jax_over_torch_search_images_per_s"] = round(
        seconds["torch_search"] / seconds["jax_search"], 4)
  for name, value in seconds.items():
    print(f"{name:>13}: {value * 1e3:10.1f} ms/step  {batch_size / value:9.1f} images/s")
  print(json.dumps(result))


if __name__ == "__main__":
  common.main(main)
