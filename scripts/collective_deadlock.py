"""Reproduces the XLA CPU collective deadlock that aborted long searches, or shows it gone.

  python scripts/collective_deadlock.py --in_flight=64   # the loop before the fix: aborts
  python scripts/collective_deadlock.py --in_flight=2    # jackpot_jax's bound: finishes

Runs --programs independent jitted programs on --devices simulated CPU devices, each a
matmul ending in an all-reduce (as every BatchNorm statistic and accuracy sum is), keeping
at most --in_flight of them dispatched and unfinished. Above XLA's 32 programs per device,
launches block on the client's pool threads and an all-reduce can wait forever; XLA's
watchdog then aborts the process after --terminate_seconds ("Fatal Python error:
Aborted", exit status 134). Prints "finished N programs in S s" otherwise.
"""

from __future__ import annotations

import argparse
import os
import time


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--programs", type=int, default=20_000)
  parser.add_argument("--in_flight", type=int, default=2)
  parser.add_argument("--devices", type=int, default=8)
  parser.add_argument("--terminate_seconds", type=int, default=40, help="XLA's default: 40")
  args = parser.parse_args()
  os.environ["XLA_FLAGS"] = (f"--xla_force_host_platform_device_count={args.devices} "
                             "--xla_cpu_collective_call_terminate_timeout_seconds="
                             f"{args.terminate_seconds}")
  import jax  # pylint: disable=import-outside-toplevel  (after XLA_FLAGS)
  import jax.numpy as jnp  # pylint: disable=import-outside-toplevel
  import numpy as np  # pylint: disable=import-outside-toplevel
  from jax.sharding import Mesh, NamedSharding, PartitionSpec  # pylint: disable=import-outside-toplevel
  from jackpot_jax.dispatch import DispatchWindow  # pylint: disable=import-outside-toplevel

  mesh = Mesh(np.array(jax.devices()), ("data",))
  split = NamedSharding(mesh, PartitionSpec("data"))
  replicated = NamedSharding(mesh, PartitionSpec())
  weights = jax.device_put(jnp.ones((64, 64)), replicated)
  summed = jax.jit(lambda w, x: jnp.sum(jnp.tanh(x @ w)), out_shardings=replicated)
  window = DispatchWindow(limit=args.in_flight)
  rng = np.random.default_rng(0)
  began = time.perf_counter()
  for _ in range(args.programs):
    batch = jax.device_put(rng.random((16 * args.devices, 64), np.float32), split)
    window.admit(summed(weights, batch))
  jax.block_until_ready(weights)
  print(f"finished {args.programs} programs in {time.perf_counter() - began:.1f} s")


if __name__ == "__main__":
  main()
