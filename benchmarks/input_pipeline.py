"""Throughput of the input pipeline against what the search consumes, and peak memory of
searches over image folders of 5,000 and 50,000 images.

Default mode, on one dataset (`--data`, any data.name; the config's by default):
- `pipeline_images_per_s`: training batches from `make_train_iterator` alone (threads, or
  `--workers` Grain processes), timed after the first batch;
- `search_images_per_s`: the search step alone on one fixed batch, the model of the config
  with random weights (what the step consumes);
- `fed_images_per_s` and `input_wait_fraction`: the search step fed by the pipeline, both
  sharing the machine as in a real search, and the fraction of that time spent waiting
  for the next batch.
Goal: pipeline >= 2x search for the default model on the machine at hand.

  python benchmarks/input_pipeline.py --data=fashion_mnist --batch_size=128 [--workers=N]

`--rss` mode writes two image folders from Debian's Fashion-MNIST files (5,000 and 50,000
training images, 1,000 test images each, under --folder_root), runs the same short search
(`--search_steps` steps of the default config with the shipped checkpoint) on each in a
child process, and samples the summed resident set of the child and its Grain workers
every 0.1 s. Goal: the larger folder peaks within 1.2x of the smaller.

  python benchmarks/input_pipeline.py --rss [--workers=2]

The last line of stdout is one JSON object.
"""

from __future__ import annotations

import json
import os
import platform
import subprocess
import sys
import tempfile
import time

import jax
import jax.numpy as jnp
import psutil
from absl import flags
from PIL import Image

from jackpot_jax import data as data_lib
from jackpot_jax.run import parallel

import common

FLAGS = flags.FLAGS
flags.DEFINE_string("data", None, "shorthand for --config.data.name")
flags.DEFINE_integer("workers", None, "shorthand for --config.data.workers")
flags.DEFINE_integer("batches", 40, "pipeline batches timed (after the first)")
flags.DEFINE_integer("search_steps", 10, "search steps timed (after compilation)")
flags.DEFINE_bool("rss", False, "measure peak memory of searches over 5,000- and "
                  "50,000-image folders instead")
flags.DEFINE_string("folder_root", None, "where --rss writes its folders (default: a "
                    "temporary directory, removed afterwards)")

_FOLDER_SIZES = (5_000, 50_000)
_FOLDER_TEST_IMAGES = 1_000


def _config():
  config = common.settings()
  if FLAGS.data is not None:
    config.data.name = FLAGS.data
  if FLAGS.workers is not None:
    config.data.workers = FLAGS.workers
  return config


def _pipeline_images_per_s(config) -> float:
  batch_size = config.search.batch_size
  batches = data_lib.make_train_iterator(config.data, batch_size=batch_size, seed=0)
  try:
    next(batches)
    start = time.perf_counter()
    for _ in range(FLAGS.batches):
      next(batches)
    return FLAGS.batches * batch_size / (time.perf_counter() - start)
  finally:
    batches.close()


def _search_rates(config, info) -> tuple[float, float, float]:
  """(step alone, step fed by the pipeline) images/s, and the fed run's wait fraction."""
  config.model.num_classes = info.num_classes
  bench = common.random_search(config, info.image_shape, jax.random.PRNGKey(0))
  step = jax.jit(bench.step, donate_argnums=(1,))
  batch_size = config.search.batch_size
  dtype = parallel.IMAGE_DTYPES[config.model.dtype]
  batches = data_lib.make_train_iterator(config.data, batch_size=batch_size, seed=0)
  try:
    first = next(batches)
    fixed = {"image": jnp.asarray(first["image"]).astype(dtype),
             "label": jnp.asarray(first["label"])}
    state, metrics = step(bench.params, bench.state, fixed)  # compiles
    jax.block_until_ready(metrics)
    start = time.perf_counter()
    for _ in range(FLAGS.search_steps):
      state, metrics = step(bench.params, state, fixed)
    jax.block_until_ready(metrics)
    alone = FLAGS.search_steps * batch_size / (time.perf_counter() - start)
    waited, start = 0.0, time.perf_counter()
    for _ in range(FLAGS.search_steps):
      asked = time.perf_counter()
      batch = next(batches)
      waited += time.perf_counter() - asked
      state, metrics = step(bench.params, state, {"image": jnp.asarray(batch["image"]).astype(
          dtype), "label": jnp.asarray(batch["label"])})
    jax.block_until_ready(metrics)
    seconds = time.perf_counter() - start
  finally:
    batches.close()
  return alone, FLAGS.search_steps * batch_size / seconds, waited / seconds


def _throughput() -> dict:
  config = _config()
  info = data_lib.load_dataset_info(config.data)
  pipeline = _pipeline_images_per_s(config)
  alone, fed, wait = _search_rates(config, info)
  result = {"data": config.data.name, "model": config.model.name,
            "batch_size": config.search.batch_size, "workers": config.data.workers,
            "pipeline_images_per_s": round(pipeline, 1),
            "search_images_per_s": round(alone, 1), "fed_images_per_s": round(fed, 1),
            "input_wait_fraction": round(wait, 4),
            "pipeline_over_search": round(pipeline / alone, 2)}
  print(f"pipeline {pipeline:9.1f} images/s ({config.data.workers} workers); search step "
        f"{alone:7.1f} images/s alone, {fed:7.1f} fed by the pipeline (waiting "
        f"{100 * wait:.1f}% of the time); pipeline/search {result['pipeline_over_search']}x")
  return result


def _write_folder(root: str, train_images: int) -> str:
  """root/{train,test}/<label>/<index>.png from Debian's Fashion-MNIST files."""
  from jackpot_jax.data.fashion_mnist import DEBIAN_SOURCE_DIR, read_fashion_mnist  # pylint: disable=import-outside-toplevel
  folder = os.path.join(root, f"fashion_{train_images}")
  if os.path.isdir(folder):
    return folder
  partial = folder + ".partial"
  for split, count in (("train", train_images), ("test", _FOLDER_TEST_IMAGES)):
    images, labels = read_fashion_mnist(DEBIAN_SOURCE_DIR, split)
    for index in range(count):
      class_dir = os.path.join(partial, split, f"class_{int(labels[index])}")
      os.makedirs(class_dir, exist_ok=True)
      Image.fromarray(images[index, :, :, 0]).save(os.path.join(class_dir, f"{index:05d}.png"))
  os.rename(partial, folder)
  return folder


def _peak_rss_of_search(folder: str, workdir: str, overrides: list[str]) -> int:
  """Peak of the summed RSS of a search process and its children, sampled every 0.1 s."""
  config_file = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                             "configs", "default.py")
  command = [sys.executable, "-m", "jackpot_jax", "search", f"--config={config_file}",
             f"--workdir={workdir}", f"--config.data.name=image_folder:{folder}", *overrides]
  child = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
                           text=True)
  process, peak = psutil.Process(child.pid), 0
  while child.poll() is None:
    try:
      tree = [process, *process.children(recursive=True)]
      peak = max(peak, sum(p.memory_info().rss for p in tree if p.is_running()))
    except psutil.Error:
      pass
    time.sleep(0.1)
  if child.returncode != 0:
    raise RuntimeError(f"the search on {folder} failed: "
                       f"{child.stderr.read().strip().splitlines()[-1:]}")
  return peak


def _memory() -> dict:
  config = _config()
  batch_size = config.search.batch_size
  with tempfile.TemporaryDirectory() as scratch:
    root = FLAGS.folder_root or scratch
    peaks = {}
    for size in _FOLDER_SIZES:
      folder = _write_folder(root, size)
      searched = size - min(5000, size // 10)
      overrides = [f"--config.search.batch_size={batch_size}",
                   f"--config.data.workers={config.data.workers}",
                   f"--config.search.num_epochs={FLAGS.search_steps * batch_size / searched}",
                   "--config.tune.num_epochs=0", "--config.eval.every_epochs=0",
                   "--config.progress_bar=false"]
      peaks[size] = _peak_rss_of_search(folder, os.path.join(scratch, f"run_{size}"),
                                        overrides)
      print(f"{size:6d} training images: peak RSS {peaks[size] / 2**20:8.1f} MiB")
  small, large = _FOLDER_SIZES
  ratio = peaks[large] / peaks[small]
  print(f"peak RSS {large} / {small} images: {ratio:.3f}x (goal <= 1.2x)")
  return {"batch_size": batch_size, "workers": config.data.workers,
          "search_steps": FLAGS.search_steps,
          "peak_rss_bytes": {str(size): peak for size, peak in peaks.items()},
          "large_over_small": round(ratio, 4)}


def main(argv):
  del argv
  result = _memory() if FLAGS.rss else _throughput()
  result["machine"] = f"{platform.machine()}, {os.cpu_count()} cores, {jax.default_backend()}"
  print(json.dumps(result))


if __name__ == "__main__":
  common.main(main)
