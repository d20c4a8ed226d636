"""The `export` and `apply-masks` commands: a workdir's jackpot back to PyTorch."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from jackpot_jax import fileio
from jackpot_jax.run import spec as spec_lib, job
from jackpot_jax.pytorch import apply_masks_file, export_torch, import_torch


def export_workdir(workdir: str | os.PathLike, output: str | os.PathLike,
                   format: str = "state_dict", clean_keys: bool = False,
                   overrides: dict | None = None) -> Path:
  """Writes the workdir's latest jackpot (tuned weights if a tuning stage ran) for PyTorch.

  BN running statistics are the ones the search re-estimated on the masked network, so
  the exported model evaluates like the Flax jackpot.
  """
  workdir = fileio.as_path(workdir, "--workdir")
  output = fileio.as_path(output, "--output")
  fileio.check_reachable(output.parent, "--output", writable=True)
  setup, state, _ = job.load_workdir(workdir, overrides)
  variables = {"params": setup.params, "batch_stats": state.batch_stats}
  tuned = job.restore_tuned_state(setup, workdir, state.batch_stats)
  if tuned is not None:
    variables = {"params": tuned.params, "batch_stats": tuned.batch_stats}
  return export_torch(setup.imported, jax.device_get(variables), jax.device_get(state.masks),
                      output, format=format, clean_keys=clean_keys)


def apply_masks(config, masks_path: str | os.PathLike, output: str | os.PathLike) -> Path:
  """Applies a masks file to a fresh import of `config.model.checkpoint`, writes W * M.

  The masks file carries a hash of the weights it was searched on; a different
  checkpoint is refused rather than silently masked.
  """
  output = fileio.as_path(output, "--output")
  fileio.check_reachable(output.parent, "--output", writable=True)
  config = spec_lib.with_folder_model(config)
  imported = import_torch(config.model.checkpoint, config.model.name, config.model.num_classes,
                          strict=config.model.strict, model_kwargs=dict(config.model.kwargs))
  masks = apply_masks_file(fileio.as_path(masks_path, "--masks"), imported)
  return export_torch(imported, jax.device_get(imported.variables), masks, output)
