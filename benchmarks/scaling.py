"""Search-step images/s against device count, on whatever devices JAX sees.

On a CPU-only machine run it with simulated devices; they share the same cores, so the
figures show the sharding's overhead, not a speed-up. On a GPU/TPU host it measures the
real scaling.

  XLA_FLAGS=--xla_force_host_platform_device_count=8 python benchmarks/scaling.py \
      [--model=resnet20 --batch_size=128 --config.search.sparsity=0.9 ...]

The search settings come from --config (see benchmarks/common.py).
"""

from __future__ import annotations

import json
import platform
import time

import jax
import numpy as np
from absl import flags

from jackpot_jax.run import parallel

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("image_size", 32, "input height and width")
flags.DEFINE_integer("steps", 10, "timed steps per device count")
flags.DEFINE_list("device_counts", [], "device counts to try (default: 1, 2, 4, ... all)")


def images_per_second(config, num_devices: int) -> float:
  batch_size, num_classes = config.search.batch_size, config.model.num_classes
  mesh = parallel.make_mesh(num_devices=num_devices)
  parallel.check_batch_size(batch_size, mesh)
  shape = (batch_size, FLAGS.image_size, FLAGS.image_size, 3)
  batch = parallel.put_batch({"image": np.random.default_rng(0).normal(size=shape).astype(np.float32),
                              "label": np.arange(batch_size, dtype=np.int32) % num_classes}, mesh)
  bench = common.random_search(config, shape[1:], jax.random.PRNGKey(0))
  params = jax.device_put(bench.params, parallel.replicated(mesh))
  state = jax.device_put(bench.state, parallel.replicated(mesh))
  step = jax.jit(bench.step, donate_argnums=(1,))
  for _ in range(2):
    state, metrics = step(params, state, batch)
  jax.block_until_ready(metrics)
  start = time.perf_counter()
  for _ in range(FLAGS.steps):
    state, metrics = step(params, state, batch)
  jax.block_until_ready(metrics)
  return FLAGS.steps * batch_size / (time.perf_counter() - start)


def main(argv):
  del argv
  available = jax.device_count()
  counts = ([int(c) for c in FLAGS.device_counts] if FLAGS.device_counts else
            [2 ** i for i in range(available.bit_length()) if 2 ** i <= available])
  config = common.settings()
  result = {"model": config.model.name, "global_batch": config.search.batch_size,
            "backend": jax.default_backend(), "device_kind": jax.devices()[0].device_kind,
            "machine": platform.machine(), "images_per_s": {}}
  for count in counts:
    result["images_per_s"][count] = round(images_per_second(config, count), 1)
    print(f"{count} device(s): {result['images_per_s'][count]} images/s", flush=True)
  print(json.dumps(result))


if __name__ == "__main__":
  common.main(main)
