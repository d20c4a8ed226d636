"""The masks `jackpot baselines` chose, kept in its workdir so that `jackpot export
--format=hf --method=NAME` can write any of them back as a Hugging Face folder.

One file per method, `WORKDIR/masks/<method>.npz`: a bool array per masked kernel, keyed by
its Flax params path joined with '/', written atomically.
"""

from __future__ import annotations

import numpy as np
from flax import traverse_util

from jackpot_jax import fileio

PyTree = dict
MASKS_FOLDER = "masks"


def _path(workdir: fileio.AnyPath, method: str) -> fileio.AnyPath:
  return workdir / MASKS_FOLDER / f"{method}.npz"


def save_masks(workdir: fileio.AnyPath, method: str, masks: PyTree) -> None:
  """Writes one method's masks (a tree of the maskable kernels' 0/1 masks) as bool."""
  flat = {"/".join(path): np.asarray(mask).astype(bool)
          for path, mask in traverse_util.flatten_dict(masks).items()}
  with fileio.atomic_path(_path(workdir, method)) as local:
    with open(local, "wb") as file:
      np.savez(file, **flat)


def saved_methods(workdir: fileio.AnyPath) -> tuple[str, ...]:
  """The methods whose masks the workdir keeps, sorted."""
  folder = workdir / MASKS_FOLDER
  if not folder.exists():
    return ()
  return tuple(sorted(path.name[:-len(".npz")] for path in folder.iterdir()
                      if path.name.endswith(".npz")))


def load_masks(workdir: fileio.AnyPath, method: str | None) -> PyTree:
  """One method's masks as a tree; an unknown or missing method is one line naming those
  the workdir keeps."""
  saved = saved_methods(workdir)
  if method not in saved:
    given = "no --method" if method is None else f"--method={method}"
    raise ValueError(f"{given}: {workdir} keeps the masks of {', '.join(saved) or 'no method'}; "
                     f"choose one with --method=NAME")
  with _path(workdir, method).open("rb") as file, np.load(file) as arrays:
    return traverse_util.unflatten_dict({tuple(key.split("/")): arrays[key]
                                         for key in arrays.files})
