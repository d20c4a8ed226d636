"""Does any XLA CPU setting close the convolution gap to PyTorch, or compile faster? Times
the JAX dense and search steps (benchmarks/step_speed.py) under each XLA_FLAGS variant in a
fresh process, and that whole process (imports, compiling both steps with no compilation
cache, the timed rounds): its seconds are mostly compiling where steps are small.

  python benchmarks/xla_cpu_flags.py --model=resnet20 --batch_size=128 [--image_size=32]
      [--config.a.b=value ...]

A flag this XLA build does not know makes the process exit; it is reported as
"unsupported" rather than timed.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path

from absl import flags

import common

FLAGS = flags.FLAGS
flags.DEFINE_integer("repeats", 3, "timed rounds per variant")
flags.DEFINE_integer("image_size", 32, "input height and width (step_speed.py's)")

VARIANTS = {
    "default": "",
    "fast_math": "--xla_cpu_enable_fast_math=true",
    "no_multi_thread_eigen": "--xla_cpu_multi_thread_eigen=false",
    "legacy_runtime": "--xla_cpu_use_thunk_runtime=false",
    "onednn_custom_calls": "--xla_cpu_use_onednn=true",
    "prefer_vector_width_512": "--xla_cpu_prefer_vector_width=512",
    "older_fusion_emitters": "--xla_cpu_use_fusion_emitters=false",
}


def main(argv):
  del argv
  script = Path(__file__).with_name("step_speed.py")
  results = {}
  for name, xla_flags in VARIANTS.items():
    # No compilation cache: each process compiles its programs, as a first run does.
    env = dict(os.environ, XLA_FLAGS=xla_flags, TF_CPP_MIN_LOG_LEVEL="3",
               JAX_ENABLE_COMPILATION_CACHE="false")
    # The same --config, shorthands and overrides this process was given.
    passed = [a for a in sys.argv[1:] if a.startswith(("--config", "--model", "--batch_size",
                                                       "--num_classes"))]
    passed.append(f"--image_size={FLAGS.image_size}")
    began = time.perf_counter()
    run = subprocess.run([sys.executable, str(script), *passed, f"--repeats={FLAGS.repeats}"],
                         env=env, capture_output=True, text=True)
    process_seconds = round(time.perf_counter() - began, 2)
    lines = [l for l in run.stdout.splitlines() if l.startswith("{")]
    if run.returncode or not lines:
      results[name] = {"xla_flags": xla_flags, "status": "unsupported",
                       "error": (run.stderr.strip().splitlines() or ["?"])[-1][:200]}
    else:
      measured = json.loads(lines[-1])
      results[name] = {"xla_flags": xla_flags, "step_ms": measured["step_ms"],
                       "jax_search_over_dense": measured["jax_search_over_dense"],
                       "process_seconds": process_seconds}
    print(json.dumps({name: results[name]}), flush=True)


if __name__ == "__main__":
  common.main(main)
