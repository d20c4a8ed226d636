"""The data API the loops use, built on Grain: dataset info, training batches, eval batches.

One pipeline serves every source. A Grain `MapDataset` of steps maps each step to this
host's rows of its global batch (read by index from the source in one batched read,
transformed by `transforms`), and Grain reads batches ahead on threads, or in
`data.workers` worker processes.

Determinism: step s of a run with seed k reads positions [i * B, (i + 1) * B) of epoch
e's permutation of the searched rows (e, i = divmod(s, steps_per_epoch)), drawn from
(k, e), and augments row r of the global batch with draws that depend on (k, s, r) only.
Host p of P reads rows [p * B / P, (p + 1) * B / P) of each global batch and nothing
else, so the global batch is the same for any number of hosts, and a run resumed at step
s starts its dataset at step s: no earlier batch is read or replayed.

Batches are dicts of numpy arrays: 'image' float32 (B, H, W, C), normalised; 'label'
int32 (B,); eval batches add 'mask' bool (B,). Text data (`text`) yields 'tokens' int32
(B, seq_len), packed sequences of the split, with 'mask' bool (B,) in eval batches; its
training batches are drawn exactly as images are, without augmentation.
"""

from __future__ import annotations

import functools
import os
import threading
import time
from typing import Any, Iterator, Mapping

from absl import flags
import grain
import numpy as np

from jackpot_jax.data import transforms
from jackpot_jax.data.config import DatasetInfo, DataSpec, as_spec
from jackpot_jax.data.sources import OpenedData, dataset_info, open_data
from jackpot_jax.data.text import OpenedText, TextInfo

DataConfig = DataSpec | Mapping[str, Any]
Batch = dict[str, np.ndarray]

# Separate RNG streams, so that the permutation and the augmentation never share draws.
_PERMUTATION_STREAM = 0
_AUGMENTATION_STREAM = 1
# How often an input worker checks that the process that started it still runs.
_PARENT_CHECK_SECONDS = 0.25
# Steps of the endless training stream (more than any run takes).
_ENDLESS = 2**50


def host_batch_size(batch_size: int, process_index: int, process_count: int) -> int:
  """The rows of a global batch each host yields.

  Raises:
    ValueError: the global batch does not split evenly, or the process index is invalid.
  """
  if batch_size < 1 or batch_size % process_count:
    raise ValueError(f"batch_size {batch_size} must be a positive multiple of the "
                     f"process count {process_count}")
  if not 0 <= process_index < process_count:
    raise ValueError(f"process_index {process_index} is outside [0, {process_count})")
  return batch_size // process_count


def epoch_permutation(seed: int, epoch: int, count: int) -> np.ndarray:
  """The order of the searched examples in `epoch`."""
  return np.random.default_rng([seed, _PERMUTATION_STREAM, epoch]).permutation(count)


class _TrainRows:
  """Step -> the searched records of this host's rows of the step's global batch."""

  def __init__(self, opened: OpenedData | OpenedText, *, batch_size: int, seed: int,
               rows: slice):
    self.records, self.searched = opened.rows("search")
    self.batch_size, self.seed, self.rows = batch_size, seed, rows
    self.steps_per_epoch = len(self.searched) // batch_size
    self._order = (-1, None)

  def _epoch_order(self, epoch: int) -> np.ndarray:
    cached_epoch, order = self._order
    if cached_epoch != epoch:
      order = self.searched[epoch_permutation(self.seed, epoch, len(self.searched))]
      self._order = (epoch, order)
    return order

  def host_keys(self, step: int) -> np.ndarray:
    """The records of this host's rows of the step's global batch."""
    epoch, index = divmod(int(step), self.steps_per_epoch)
    keys = self._epoch_order(epoch)[index * self.batch_size:(index + 1) * self.batch_size]
    return keys[self.rows]


class _TrainBatch(_TrainRows):
  """Step -> this host's rows of the step's global batch, augmented and normalised."""

  def __init__(self, opened: OpenedData, **rows_kwargs):
    super().__init__(opened, **rows_kwargs)
    self.shape, self.preprocessing = opened.shape, opened.preprocessing

  def __call__(self, step: int) -> Batch:
    images, labels = zip(*self.records.read(self.host_keys(step)))
    pixels = transforms.train_images(list(images), self.preprocessing, self.shape,
                                     (self.seed, _AUGMENTATION_STREAM, int(step)),
                                     self.batch_size, self.rows)
    return {"image": transforms.normalise(pixels, self.preprocessing.mean,
                                          self.preprocessing.std),
            "label": np.asarray(labels, np.int32)}


class _TokenTrainBatch(_TrainRows):
  """Step -> this host's rows of the step's global batch of token sequences."""

  def __call__(self, step: int) -> Batch:
    return {"tokens": self.records.read(self.host_keys(step))}


class _TokenEvalBatch:
  """Batch number -> this host's rows of that global eval batch of token sequences; rows
  past the end of the split are zeros with 'mask' False."""

  def __init__(self, opened: OpenedText, split: str, *, batch_size: int, rows: slice):
    self.records, self.split_rows = opened.rows(split)
    self.batch_size, self.rows = batch_size, rows

  def __call__(self, number: int) -> Batch:
    positions = int(number) * self.batch_size + np.arange(self.rows.start, self.rows.stop)
    mask = positions < len(self.split_rows)
    tokens = np.zeros((len(positions), self.records.seq_len), np.int32)
    tokens[mask] = self.records.read(self.split_rows[positions[mask]])
    return {"tokens": tokens, "mask": mask}


class _EvalBatch:
  """Batch number -> this host's rows of that global eval batch; rows past the end of
  the split are zero images with 'mask' False."""

  def __init__(self, opened: OpenedData, split: str, *, batch_size: int, rows: slice):
    self.records, self.split_rows = opened.rows(split)
    self.shape, self.preprocessing = opened.shape, opened.preprocessing
    self.image_shape = opened.image_shape
    self.batch_size, self.rows = batch_size, rows

  def __call__(self, number: int) -> Batch:
    positions = int(number) * self.batch_size + np.arange(self.rows.start, self.rows.stop)
    mask = positions < len(self.split_rows)
    image = np.zeros((len(positions), *self.image_shape), np.float32)
    label = np.zeros(len(positions), np.int32)
    if mask.any():
      examples = self.records.read(self.split_rows[positions[mask]])
      pixels = np.stack([transforms.eval_image(pixels, self.preprocessing, self.shape)
                         for pixels, _ in examples]).astype(np.float32)
      image[mask] = transforms.normalise(pixels, self.preprocessing.mean,
                                         self.preprocessing.std)
      label[mask] = [example_label for _, example_label in examples]
    return {"image": image, "label": label, "mask": mask}


class _Batches:
  """Iterates a Grain dataset; `close()` stops its threads and worker processes."""

  def __init__(self, dataset: grain.IterDataset):
    self._iterator = iter(dataset)

  def __iter__(self) -> Iterator[Batch]:
    return self

  def __next__(self) -> Batch:
    return next(self._iterator)

  def close(self) -> None:
    self._iterator.close()


def _end_with_the_parent(worker_index: int, worker_count: int, *, parent: int) -> None:
  """Runs first in each Grain worker: a daemon thread ends the worker once the process
  that started it (`parent`) is gone, so a SIGKILLed search leaves no worker behind, and
  a worker whose parent died while it was starting ends at once.

  Not the kernel's parent-death signal (prctl PR_SET_PDEATHSIG): that fires when the
  thread that started the worker ends, not its process, and Grain starts workers from
  its own threads; a worker killed that way while it held a lock of its pipeline left the
  parent's `close()` waiting for that lock forever."""
  del worker_index, worker_count

  def watch() -> None:
    while os.getppid() == parent:
      time.sleep(_PARENT_CHECK_SECONDS)
    os._exit(1)  # pylint: disable=protected-access

  threading.Thread(target=watch, name="end-with-the-parent", daemon=True).start()


def _read(batches: grain.MapDataset, spec: DataSpec, workers: int) -> _Batches:
  """Reads ahead `spec.prefetch` batches on threads, or in `workers` processes."""
  dataset = batches.to_iter_dataset(grain.ReadOptions(num_threads=max(spec.prefetch, 1),
                                                      prefetch_buffer_size=spec.prefetch))
  if workers:
    # Grain's workers read absl flags of their own; a library caller may not have parsed
    # any (the command line always has).
    if not flags.FLAGS.is_parsed():
      flags.FLAGS.mark_as_parsed()
    dataset = dataset.mp_prefetch(grain.MultiprocessingOptions(
        num_workers=workers, per_worker_buffer_size=max(spec.prefetch, 1)),
                                  worker_init_fn=functools.partial(_end_with_the_parent,
                                                                   parent=os.getpid()))
  return _Batches(dataset)


def load_dataset_info(data_config: DataConfig) -> DatasetInfo | TextInfo:
  """Classes, image shape, split sizes and preprocessing of the configured dataset (opens
  it, reading one training image, and a sample of them where the statistics are unset);
  for text data, sequence counts and the separator (tokenizing it on the first open)."""
  return dataset_info(as_spec(data_config))


def make_train_iterator(data_config: DataConfig, *, batch_size: int, seed: int,
                        start_step: int = 0, process_index: int = 0,
                        process_count: int = 1) -> _Batches:
  """Endless augmented training batches, this host's share of each global batch.

  The batch at step s depends only on (data config, batch_size, seed, s), never on
  `start_step` or the number of hosts, so a run resumed at step s sees exactly the data
  it would have seen.

  Args:
    data_config: a `DataSpec`, or a data config to resolve.
    batch_size: the global batch size; each host yields batch_size // process_count.
    seed: non-negative integer seeding the order and the augmentation.
    start_step: the step the first yielded batch belongs to.
    process_index, process_count: this host and the number of hosts.
  """
  spec = as_spec(data_config)
  host_size = host_batch_size(batch_size, process_index, process_count)
  if seed < 0 or start_step < 0:
    raise ValueError(f"seed {seed} and start_step {start_step} must be non-negative")
  opened = open_data(spec)
  if len(opened.searched) < batch_size:
    raise ValueError(f"batch_size {batch_size} exceeds the {len(opened.searched)} searched "
                     f"training examples of {spec.name}")
  rows = slice(process_index * host_size, (process_index + 1) * host_size)
  train_batch = _TokenTrainBatch if isinstance(opened, OpenedText) else _TrainBatch
  batch = train_batch(opened, batch_size=batch_size, seed=seed, rows=rows)
  return _read(grain.MapDataset.range(start_step, _ENDLESS).map(batch), spec, spec.workers)


def make_eval_batches(data_config: DataConfig, split: str = "test", *, batch_size: int,
                      process_index: int = 0, process_count: int = 1) -> _Batches:
  """One pass over `split`, unaugmented, covering each example once: 'holdout' (the
  training images held out of the search, `data.holdout_images`), 'train', or a split of
  the dataset ('test' reads 'validation' / val/ where there is no test split).

  Batches are padded to batch_size // process_count rows; the 'mask' field is True on
  real examples, so accuracy is sum(correct * mask) / sum(mask) summed over hosts. Every
  host yields the same number of batches. Evaluations read on threads: they are short
  and frequent, and worker processes would start anew for each.
  """
  spec = as_spec(data_config)
  host_size = host_batch_size(batch_size, process_index, process_count)
  opened = open_data(spec)
  rows = slice(process_index * host_size, (process_index + 1) * host_size)
  eval_batch = _TokenEvalBatch if isinstance(opened, OpenedText) else _EvalBatch
  batch = eval_batch(opened, split, batch_size=batch_size, rows=rows)
  num_batches = -(-len(batch.split_rows) // batch_size)
  return _read(grain.MapDataset.range(num_batches).map(batch), spec, workers=0)
