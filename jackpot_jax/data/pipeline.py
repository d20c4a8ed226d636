"""The data API the training loop uses: dataset info, training iterator, eval batches.

Every function takes a `DataSpec` (a run resolves its own once; a data config mapping is
resolved on the spot, for scripts and tests) and dispatches to the
in-memory pipeline (fashion_mnist, cifar10/100, npz files, image folders) or the
streamed tf.data one (imagenet2012). Batches are dicts of numpy arrays: 'image' float32
(B, H, W, C), normalised; 'label' int32 (B,); eval batches add 'mask' bool (B,).
"""

from __future__ import annotations

from typing import Any, Iterator, Mapping

from jackpot_jax.data import in_memory
from jackpot_jax.data.config import DatasetInfo, DataSpec, as_spec
from jackpot_jax.data.in_memory import Batch, Statistics
from jackpot_jax.data.prefetch import prefetch
from jackpot_jax.data.sources import in_memory_info, load_arrays
from jackpot_jax.data.tfds_source import tfds_info

DataConfig = DataSpec | Mapping[str, Any]


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


def _statistics(spec: DataSpec, channels: int) -> Statistics:
  """The normalisation of `spec`, computed from the training pixels when unset."""
  if spec.mean is None:
    return load_arrays(spec).pixel_statistics
  if len(spec.mean) != channels:
    raise ValueError(f"data.mean has {len(spec.mean)} values but {spec.name} images have "
                     f"{channels} channels; give one mean and std per channel")
  return spec.mean, spec.std


def _streamed():
  # Imported on use: TensorFlow takes seconds to import and only streamed datasets need
  # it at module level (npz files, image folders and the PyTorch scripts never do).
  from jackpot_jax.data import streamed  # pylint: disable=import-outside-toplevel
  return streamed


def load_dataset_info(data_config: DataConfig) -> DatasetInfo:
  """Classes, image shape and split sizes of the configured dataset.

  TFDS datasets answer from their metadata; npz files and image folders are loaded (and
  kept for the iterators).
  """
  spec = as_spec(data_config)
  if spec.kind == "tfds":
    return tfds_info(spec)
  return in_memory_info(spec, load_arrays(spec))


def make_train_iterator(data_config: DataConfig, *, batch_size: int, seed: int,
                        start_step: int = 0, process_index: int = 0,
                        process_count: int = 1) -> Iterator[Batch]:
  """Endless augmented training batches, this host's share of each global batch.

  The batch at step s depends only on (data config, batch_size, seed, s), never on
  `start_step`, so a run resumed at step s sees exactly the data it would have seen.

  Args:
    data_config: a `DataSpec`, or a data config to resolve.
    batch_size: the global batch size; each host yields batch_size // process_count.
    seed: non-negative integer seeding the order and the augmentation.
    start_step: the step the first yielded batch belongs to.
    process_index, process_count: this host and the number of hosts.
  """
  spec = as_spec(data_config)
  host_batch_size(batch_size, process_index, process_count)
  if seed < 0 or start_step < 0:
    raise ValueError(f"seed {seed} and start_step {start_step} must be non-negative")
  if spec.streamed:
    return _streamed().train_batches(
        spec, batch_size=batch_size, seed=seed, start_step=start_step,
        process_index=process_index, process_count=process_count)
  arrays = load_arrays(spec)
  batches = in_memory.train_batches(
      arrays, spec, _statistics(spec, arrays.train_images.shape[-1]), batch_size=batch_size,
      seed=seed, start_step=start_step, process_index=process_index,
      process_count=process_count)
  return prefetch(batches, spec.prefetch)


def make_eval_batches(data_config: DataConfig, split: str = "test", *, batch_size: int,
                      process_index: int = 0, process_count: int = 1) -> Iterator[Batch]:
  """One pass over `split`, unaugmented, covering each example once: 'test', 'train', or
  'holdout' (the training images held out of the search, `data.holdout_images`).

  Batches are padded to batch_size // process_count rows; the 'mask' field is True on
  real examples, so accuracy is sum(correct * mask) / sum(mask) summed over hosts. Call
  it again for every evaluation.
  """
  spec = as_spec(data_config)
  host_batch_size(batch_size, process_index, process_count)
  if spec.streamed:
    return _streamed().eval_batches(
        spec, split, batch_size=batch_size, process_index=process_index,
        process_count=process_count)
  arrays = load_arrays(spec)
  batches = in_memory.eval_batches(
      arrays, spec, _statistics(spec, arrays.train_images.shape[-1]), split,
      batch_size=batch_size, process_index=process_index, process_count=process_count)
  return prefetch(batches, spec.prefetch)
