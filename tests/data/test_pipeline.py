"""The Grain pipeline: determinism, resume, host sharding, workers, eval batches. No test touches the network."""

from __future__ import annotations

import json
import multiprocessing
import os
import subprocess
import sys
import threading
import time

import numpy as np
import psutil
import pytest

from conftest import REPO
from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from data_helpers import (assert_batches_equal, data_config, npz_dataset, take,
                          worker_that_ends_with_its_parent)
from jackpot_jax.data import load_dataset_info, make_eval_batches, make_train_iterator
from jackpot_jax.data import holdout
from jackpot_jax.data.records import ArraySplit


@pytest.mark.parametrize("augmentation", ["cifar", "imagenet", "none"])
def test_batch_at_a_step_does_not_depend_on_the_start_step(tmp_path, augmentation):
  config = data_config(f"npz:{npz_dataset(tmp_path)}", augment=augmentation)
  from_zero = take(make_train_iterator(config, batch_size=8, seed=3), 12)
  # 40 examples make 5 steps per epoch: step 7 resumes inside the second epoch.
  resumed = take(make_train_iterator(config, batch_size=8, seed=3, start_step=7), 5)
  assert_batches_equal(from_zero[7:], resumed)
  assert_batches_equal(from_zero, take(make_train_iterator(config, batch_size=8, seed=3), 12))


def test_seed_changes_order_and_augmentation(tmp_path):
  config = data_config(f"npz:{npz_dataset(tmp_path)}", augment="cifar")
  first = next(make_train_iterator(config, batch_size=8, seed=0))
  second = next(make_train_iterator(config, batch_size=8, seed=1))
  assert not np.array_equal(first["image"], second["image"])


def _recovered(batches):
  images = np.concatenate([b["image"][b.get("mask", slice(None))] for b in batches])
  return sorted(map(bytes, np.rint(images * 255).astype(np.uint8)))


def test_each_epoch_visits_every_searched_example_once_and_no_held_out_one(tmp_path):
  path = npz_dataset(tmp_path)
  config = data_config(f"npz:{path}", augment="none", mean=(0.0,) * 3, std=(1.0,) * 3,
                   holdout_images=8)
  searched = _recovered(take(make_train_iterator(config, batch_size=8, seed=0), 4))
  held_out = _recovered(make_eval_batches(config, "holdout", batch_size=3))
  x_train = np.load(path)["x_train"]
  assert len(searched) == 32 and len(held_out) == 8
  assert sorted(searched + held_out) == sorted(map(bytes, x_train))
  # The held-out slice does not move with the search seed.
  assert _recovered(take(make_train_iterator(config, batch_size=8, seed=7), 4)) == searched


def test_default_holdout_is_5000_images_or_a_tenth_of_smaller_sets():
  assert holdout.holdout_count(None, 1_281_167) == 5000
  assert holdout.holdout_count(None, 40) == 4
  assert holdout.holdout_count(0, 40) == 0
  searched, held_out = holdout.partition(np.arange(40), 4)
  assert len(held_out) == 4 and sorted(np.concatenate([searched, held_out])) == list(range(40))
  # A slice of the split (its rows 10 to 49) holds out the same positions of the slice.
  sliced_searched, sliced_held_out = holdout.partition(np.arange(10, 50), 4)
  np.testing.assert_array_equal(sliced_held_out, held_out + 10)
  np.testing.assert_array_equal(sliced_searched, searched + 10)


@pytest.mark.parametrize("augmentation", ["cifar", "imagenet"])
def test_hosts_partition_the_global_batch(tmp_path, augmentation):
  config = data_config(f"npz:{npz_dataset(tmp_path)}", augment=augmentation)
  single = take(make_train_iterator(config, batch_size=8, seed=5, start_step=2), 3)
  hosts = [take(make_train_iterator(config, batch_size=8, seed=5, start_step=2,
                                     process_index=index, process_count=4), 3)
           for index in range(4)]
  for step, whole in enumerate(single):
    for key in ("image", "label"):
      np.testing.assert_array_equal(np.concatenate([host[step][key] for host in hosts]),
                                    whole[key])


def test_a_late_resume_reads_only_the_records_of_its_own_steps(tmp_path, monkeypatch):
  """Resuming at step s starts the dataset at s: nothing before it is read or replayed."""
  config = data_config(f"npz:{npz_dataset(tmp_path)}", augment="cifar", prefetch=0)
  load_dataset_info(config)  # opens the dataset once, its statistics read from every image
  reads = []
  original = ArraySplit.read
  monkeypatch.setattr(ArraySplit, "read",
                      lambda self, indices: reads.append(len(indices)) or original(self, indices))
  late = next(make_train_iterator(config, batch_size=8, seed=3, start_step=10**9))
  assert reads == [8] and late["image"].shape == (8, 8, 8, 3)


def test_worker_processes_yield_the_batches_of_the_in_process_pipeline(tmp_path):
  config = data_config(f"npz:{npz_dataset(tmp_path)}", augment="cifar")
  in_process = take(make_train_iterator(config, batch_size=8, seed=2, start_step=3), 4)
  config.workers = 2
  batches = make_train_iterator(config, batch_size=8, seed=2, start_step=3)
  try:
    assert_batches_equal(in_process, take(batches, 4))
  finally:
    batches.close()


def test_an_input_worker_lives_as_long_as_its_parent_process_not_the_thread_that_started_it(
    tmp_path):
  """Grain starts its workers from its own threads and ends those threads at close(): a
  worker must not die with that thread (killed mid-step, it may hold a lock that close()
  then waits for forever)."""
  ready = tmp_path / "ready"
  worker = multiprocessing.get_context("spawn").Process(
      target=worker_that_ends_with_its_parent, args=(os.getpid(), str(ready)))

  def start_and_wait_until_the_worker_watches() -> None:
    worker.start()
    deadline = time.monotonic() + 120
    while not ready.exists() and worker.is_alive() and time.monotonic() < deadline:
      time.sleep(0.05)

  thread = threading.Thread(target=start_and_wait_until_the_worker_watches)
  thread.start()
  thread.join()  # the thread that started the worker has ended
  try:
    assert ready.exists(), f"the worker did not start (exit code {worker.exitcode})"
    time.sleep(1.0)
    assert worker.is_alive(), f"the worker ended with exit code {worker.exitcode}"
  finally:
    worker.terminate()
    worker.join(timeout=30)


_HOLD_A_PIPELINE = """
import itertools, json, sys, time
import psutil
from jackpot_jax.data import default_data_config, make_train_iterator

if __name__ == "__main__":
  config = default_data_config("npz:" + sys.argv[1])
  config.workers = 2
  batches = make_train_iterator(config, batch_size=8, seed=0)
  next(batches)
  workers = [p.pid for p in psutil.Process().children() if "spawn_main" in " ".join(p.cmdline())]
  print(json.dumps(workers), flush=True)
  time.sleep(600)
"""


def test_a_killed_search_leaves_no_input_worker_behind(tmp_path):
  script = tmp_path / "hold.py"
  script.write_text(_HOLD_A_PIPELINE)
  holder = subprocess.Popen([sys.executable, str(script), str(npz_dataset(tmp_path))],
                            cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
  try:
    workers = json.loads(holder.stdout.readline())
  finally:
    holder.kill()
    holder.wait()
  assert len(workers) == 2
  # A worker still starting when its parent died ends once started: allow a loaded machine.
  deadline = time.monotonic() + 120
  while any(psutil.pid_exists(pid) and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE
            for pid in workers) and time.monotonic() < deadline:
    time.sleep(0.1)
  alive = [pid for pid in workers if psutil.pid_exists(pid)
           and psutil.Process(pid).status() != psutil.STATUS_ZOMBIE]
  assert alive == []


@pytest.mark.parametrize("process_count", [1, 2])
def test_eval_batches_cover_every_example_exactly_once(tmp_path, process_count):
  config = data_config(f"npz:{npz_dataset(tmp_path)}", mean=(0.0,) * 3, std=(1.0,) * 3)
  seen, counts = [], []
  for index in range(process_count):
    batches = list(make_eval_batches(config, "test", batch_size=4, process_index=index,
                                     process_count=process_count))
    counts.append(len(batches))
    for batch in batches:
      assert batch["image"].shape == (4 // process_count, 8, 8, 3)
      assert not batch["image"][~batch["mask"]].any()
      first_pixel = np.rint(batch["image"][:, 0, 0, 0] * 255).astype(int)
      seen.extend(first_pixel[batch["mask"]])
  assert counts == [4] * process_count  # ceil(13 / 4) global batches, on every host
  assert sorted(seen) == list(range(13))


def test_eval_batches_are_the_unaugmented_normalised_images(tmp_path):
  path = npz_dataset(tmp_path)
  config = data_config(f"npz:{path}", augment="cifar", mean=(0.5, 0.5, 0.5), std=(0.25,) * 3)
  batch = next(make_eval_batches(config, batch_size=16))
  x_test = np.load(path)["x_test"]
  np.testing.assert_allclose(batch["image"][:13], (x_test / 255 - 0.5) / 0.25, atol=1e-5)
  assert batch["mask"].sum() == 13
