"""The `export` and `apply-masks` commands: a workdir's jackpot back to PyTorch, or a
language-model workdir's masks back as a Hugging Face folder (`--format=hf`)."""

from __future__ import annotations

import os
from pathlib import Path

import jax

from jackpot_jax import fileio, pytorch
from jackpot_jax.pytorch import apply_masks_file, import_torch
from jackpot_jax.pytorch.hf_decoders import export_hf_decoder, import_hf_decoder
from jackpot_jax.run import (job, lm_masks, lm_search, lm_spec, spec as spec_lib,
                             workdir as workdir_lib)

HF_FORMAT = "hf"


def export_workdir(workdir: str | os.PathLike, output: str | os.PathLike,
                   format: str = "state_dict", clean_keys: bool = False,
                   overrides: dict | None = None, method: str | None = None) -> Path:
  """Writes the workdir's latest jackpot (tuned weights if a tuning stage ran) for PyTorch;
  `format="hf"`: a language-model workdir's masks (`method`'s) as a Hugging Face folder.

  BN running statistics are the ones the search re-estimated on the masked network, so
  the exported model evaluates like the Flax jackpot.
  """
  workdir = fileio.as_path(workdir, "--workdir")
  output = fileio.as_path(output, "--output")
  fileio.check_reachable(output.parent, "--output", writable=True)
  config = workdir_lib.load_workdir_config(workdir, overrides)
  is_language_model = lm_spec.is_language_model(config)
  if (format == HF_FORMAT) != is_language_model:
    raise ValueError(f"--format={format} does not fit {workdir}, which holds a "
                     + ("language model's masks: use --format=hf" if is_language_model else
                        "search of an image model: use --format=state_dict, prune or masks"))
  if is_language_model:
    return export_language_model(config, workdir, output, method)
  setup, state, _ = job.load_workdir(workdir, overrides)
  variables = {"params": setup.params, "batch_stats": state.batch_stats}
  tuned = job.restore_tuned_state(setup, workdir, state.batch_stats)
  if tuned is not None:
    variables = {"params": tuned.params, "batch_stats": tuned.batch_stats}
  return pytorch.export_torch(setup.imported, jax.device_get(variables),
                              jax.device_get(state.masks), output, format=format,
                              clean_keys=clean_keys)


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
  return pytorch.export_torch(imported, jax.device_get(imported.variables), masks, output)


def export_language_model(config, workdir, output, method: str | None) -> Path:
  """The checkpoint folder written again with W * M for `method`'s masks (None: a search
  workdir's jackpot): a new folder that transformers' `from_pretrained` loads (config and
  tokenizer files copied)."""
  if fileio.is_cloud(output):
    raise ValueError(f"--output={output}: --format=hf writes a local folder; give a local path")
  if method is None and lm_search.JACKPOT in lm_masks.saved_methods(workdir):
    method = lm_search.JACKPOT
  masks = lm_masks.load_masks(workdir, method)
  folder = lm_spec.resolve(config).folder
  _, params, _ = import_hf_decoder(folder)
  return export_hf_decoder(folder, params, masks, output)
