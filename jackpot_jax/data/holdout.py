"""The held-out slice of the training split: what the search is evaluated and stopped on.

Choices made during a search (early stopping, any pick between checkpoints) must not
look at the test split, or the reported test accuracy is optimistic. A fixed slice of
the training images is kept out of every search batch and used for those choices.

The slice depends only on the number of training images and its size, never on the
search seed, so runs with different seeds are selected on the same images. It is a
seeded random subset (image folders list their files class by class, so the first N
would cover few classes). Text data holds out packed training sequences the same way
(data.holdout_sequences).
"""

from __future__ import annotations

import numpy as np

DEFAULT_IMAGES = 5000
DEFAULT_FRACTION = 0.1
# Fixed, so that the held-out images do not change with search.seed.
_SEED = 16


def holdout_count(requested: int | None, num_train: int, field: str = "data.holdout_images",
                  unit: str = "images") -> int:
  """Records (images, or text sequences) to hold out: `requested`, or min(5000, 10% of the
  training split) when None; `field` and `unit` name them in the error.

  Raises:
    ValueError (one line): a negative count, or one that leaves no training record.
  """
  if requested is None:
    return min(DEFAULT_IMAGES, int(DEFAULT_FRACTION * num_train))
  count = int(requested)
  if count < 0 or count >= num_train:
    raise ValueError(f"{field}={requested} must be in [0, {num_train}) for the "
                     f"{num_train} training {unit}; lower it, or 0 for no held-out slice")
  return count


def partition(train_rows: np.ndarray, count: int) -> tuple[np.ndarray, np.ndarray]:
  """(searched, held-out) rows of the training split, each in ascending order: `count` of
  `train_rows` (the split's rows, or its slice's) held out, the rest searched."""
  held_out = np.zeros(len(train_rows), bool)
  held_out[np.random.default_rng(_SEED).permutation(len(train_rows))[:count]] = True
  return train_rows[~held_out], train_rows[held_out]
