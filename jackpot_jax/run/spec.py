"""The run spec: a config validated once and frozen, built at start and passed down.

`resolve(config)` is the one place a config is checked, before anything heavy loads;
every check fails with one line naming the field and what to do. A checkpoint that is a
Hugging Face model folder sets model.name (from auto), model.kwargs and model.num_classes
(from 0) from its config.json here, so the frozen config, the saved one and the report
hold the model that runs. `check_fit` adds the checks that need the dataset's shape and
the device count, before the checkpoint loads, and `check_checkpoint_fit` those that need
the checkpoint, before its first forward pass.
"""

from __future__ import annotations

import copy
import dataclasses

import ml_collections

from jackpot_jax import fileio, models
from jackpot_jax.run import compilation_cache, lm_spec, parallel, profiling
from jackpot_jax.search import (block_targets, masking, optim, schedules, scores, sparsity,
                                 steps)
from jackpot_jax.data.config import DatasetInfo, DataSpec, resolve_spec
from jackpot_jax.pytorch import hf_folder

# search.selected_on: which search state is the jackpot.
SELECTIONS = ("holdout", "last_step")


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What a run computes: the frozen config with its data, model and jackpot selection
  (search.selected_on, "holdout" or "last_step") resolved."""

  config: ml_collections.FrozenConfigDict
  data: DataSpec
  model: models.ModelSpec
  profile_steps: tuple[int, int] | None
  selected_on: str


def _choice(value, allowed, field: str) -> None:
  if value not in allowed:
    raise ValueError(f"unknown {field} {value!r}; choose one of {', '.join(map(str, allowed))}")


def _check(config: ml_collections.ConfigDict) -> None:
  """Rejects values no run could use, naming the field and what to do."""
  if not config.model.checkpoint:
    raise ValueError("model.checkpoint is empty; pass --config.model.checkpoint=PATH to a "
                     "pre-trained PyTorch checkpoint")
  fileio.as_path(config.model.checkpoint, "model.checkpoint")
  _choice(config.model.dtype, parallel.IMAGE_DTYPES, "model.dtype")
  if config.model.num_classes < 1:
    raise ValueError(f"model.num_classes must be positive, got {config.model.num_classes} "
                     "(0 only takes a Hugging Face checkpoint folder's number of labels)")
  search = config.search
  if not 0.0 <= search.sparsity < 1.0:
    raise ValueError(f"search.sparsity must be in [0, 1), got {search.sparsity}")
  sparsity.PLAN_REGISTRY.check(search.sparsity_plan)
  pattern = masking.parse_pattern(search.pattern)
  if pattern is not None and (search.sparsity_plan != "l1" or search.layer_overrides):
    raise ValueError(f"search.pattern={pattern} sets every masked layer's sparsity; drop "
                     "search.sparsity_plan and search.layer_overrides, or set "
                     "search.pattern=unstructured")
  scores.SCORE_INIT_REGISTRY.check(search.score_init)
  _choice(search.bn_mode, steps.BN_MODES, "search.bn_mode")
  if not 0.0 < search.bn_momentum <= 1.0:
    raise ValueError(f"search.bn_momentum must be in (0, 1] (PyTorch's convention, 0.1 the "
                     f"reference), got {search.bn_momentum}")
  if search.bn_mode != "recalibrate" and search.bn_momentum != steps.TORCH_BN_MOMENTUM:
    raise ValueError(f"search.bn_momentum={search.bn_momentum} needs search.bn_mode="
                     f"recalibrate; search.bn_mode={search.bn_mode} updates no statistics")
  _choice(search.bn_statistics, steps.BN_STATISTICS, "search.bn_statistics")
  if search.bn_statistics == "reestimated" and config.eval.recalibration_images <= 0:
    raise ValueError("search.bn_statistics=reestimated re-estimates on "
                     "eval.recalibration_images training images; set it > 0 (default 2048)")
  steps.check_distillation(search)
  schedules.check_levers(search)
  _choice(search.classifier, sparsity.LAYER_POLICIES, "search.classifier")
  _choice(search.first_layer, sparsity.LAYER_POLICIES, "search.first_layer")
  _choice(search.hidden_dense, sparsity.LAYER_POLICIES, "search.hidden_dense")
  for section in ("search", "tune"):
    optim.check_section(config[section], section)
  if config.eval.batch_size < 1:
    raise ValueError(f"eval.batch_size must be positive, got {config.eval.batch_size}")
  if config.eval.stop_within_dense < 0:
    raise ValueError(f"eval.stop_within_dense must be >= 0 (0 disables), got "
                     f"{config.eval.stop_within_dense}")
  if config.eval.stop_within_dense > 0 and config.eval.every_epochs <= 0:
    raise ValueError("eval.stop_within_dense needs evaluations during the search; set "
                     "eval.every_epochs > 0")
  if search.selected_on is not None:
    _choice(search.selected_on, SELECTIONS, "search.selected_on")
  if search.selected_on == "holdout" and not _evaluates_on_holdout(config):
    raise ValueError("search.selected_on=holdout picks the jackpot by held-out evaluations, "
                     f"but data.holdout_images={config.data.holdout_images} and "
                     f"eval.every_epochs={config.eval.every_epochs} make none; set both > 0, "
                     "or search.selected_on=last_step")
  for field in ("recalibration_images", "wanda_images"):
    if config.eval[field] < 0:
      raise ValueError(f"eval.{field} must be >= 0 (0 skips), got {config.eval[field]}")
  if config.checkpoint.every_steps < 1 or config.checkpoint.keep < 1:
    raise ValueError("checkpoint.every_steps and checkpoint.keep must be positive")
  if config.log_every_steps < 1:
    raise ValueError(f"log_every_steps must be positive, got {config.log_every_steps}")
  compilation_cache.check(config.compilation_cache_dir)


def _evaluates_on_holdout(config: ml_collections.ConfigDict) -> bool:
  """Whether the search evaluates itself on held-out training images (data.holdout_images
  None holds out its default share)."""
  holdout = config.data.holdout_images
  return (holdout is None or holdout > 0) and config.eval.every_epochs > 0


def with_folder_model(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """`config` with the model of a checkpoint folder's config.json (a copy), or as it is.

  model.name=auto and model.num_classes=0 say "the folder's"; given values must agree.
  """
  model = config.model
  if not model.checkpoint:
    if model.name == hf_folder.AUTO:
      raise ValueError(f"model.name={hf_folder.AUTO} takes the model from a Hugging Face "
                       "checkpoint folder, but model.checkpoint is empty; pass "
                       "--config.model.checkpoint=DIR")
    return config
  path = fileio.as_path(model.checkpoint, "model.checkpoint")
  if not hf_folder.is_model_folder(path):
    if model.name == hf_folder.AUTO:
      raise ValueError(f"model.name={hf_folder.AUTO} takes the model from a Hugging Face "
                       f"checkpoint folder's config.json, but model.checkpoint {path} is not a "
                       f"folder; set --config.model.name to its model (one of "
                       f"{', '.join(models.model_names())})")
    return config
  resolved = hf_folder.resolve_model(path, model.name, model.num_classes, dict(model.kwargs))
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.name = resolved.name
    config.model.num_classes = resolved.num_classes
    config.model.kwargs = ml_collections.ConfigDict(resolved.kwargs)
  return config


def resolve(config: ml_collections.ConfigDict) -> RunSpec:
  """Validates `config` once and freezes it with its resolved data and model specs (a
  checkpoint folder's model filled in, see `with_folder_model`)."""
  lm_spec.check_not_language_model(config)
  config = with_folder_model(config)
  model = models.get_model_spec(config.model.name)
  _check(config)
  block_targets.check_blocks(model.name, model.feature_blocks, config.search)
  selected_on = config.search.selected_on
  if selected_on is None:
    selected_on = "holdout" if _evaluates_on_holdout(config) else "last_step"
  return RunSpec(config=ml_collections.FrozenConfigDict(config),
                 data=resolve_spec(config.data, config.model.checkpoint), model=model,
                 profile_steps=profiling.parse_profile_steps(config.profile_steps),
                 selected_on=selected_on)


def check_fit(spec: RunSpec, data_info: DatasetInfo, device_count: int) -> None:
  """Checks the spec against the dataset and the devices, before the checkpoint loads.

  Each of these would otherwise fail only after the checkpoint import, the compilation
  or, for the tuning stage, the whole search.
  """
  config = spec.config
  if data_info.num_classes != config.model.num_classes:
    raise ValueError(f"model.num_classes={config.model.num_classes} but dataset "
                     f"{config.data.name!r} has {data_info.num_classes} classes; set "
                     f"--config.model.num_classes={data_info.num_classes}")
  channels = data_info.image_shape[-1]
  if spec.data.mean is not None and len(spec.data.mean) != channels:
    raise ValueError(f"data.mean has {len(spec.data.mean)} values but {config.data.name!r} "
                     f"images have {channels} channel(s); give one mean and std per channel")
  if config.eval.every_epochs > 0 and data_info.num_holdout == 0:
    raise ValueError(f"eval.every_epochs={config.eval.every_epochs} evaluates the search on "
                     "held-out training images, but data.holdout_images=0 holds none out; "
                     "set data.holdout_images > 0, or eval.every_epochs=0")
  for section in ("search", "tune") if config.tune.num_epochs > 0 else ("search",):
    field, size = f"{section}.batch_size", config[section].batch_size
    if size > data_info.num_train:
      raise ValueError(f"{field}={size} exceeds the {data_info.num_train} training examples "
                       f"the search uses of {config.data.name!r} ({data_info.num_holdout} "
                       "more are held out: data.holdout_images); lower it")
    if size % device_count:
      raise ValueError(f"{field}={size} is not divisible by the {device_count} devices; "
                       f"choose a multiple of {device_count} or set mesh.num_devices")


def check_checkpoint_fit(spec: RunSpec, data_info: DatasetInfo,
                         checkpoint_input: tuple[int, ...]) -> None:
  """Checks the imported checkpoint against the data: a first layer made for another
  channel count would otherwise fail at the first forward pass, as a Flax shape error.

  Args:
    checkpoint_input: the (H, W, C) input the checkpoint was made for
      (`ImportedModel.input_shape`).
  """
  wanted, channels = checkpoint_input[-1], data_info.image_shape[-1]
  if wanted == channels:
    return
  origin = "" if data_info.preprocessing is None else (
      f" (from the {data_info.preprocessing.channels_from})")
  convert = (f"set --config.data.channels={wanted} to convert the images, or "
             if wanted in (1, 3) else "")
  raise ValueError(f"the checkpoint's first layer {spec.model.first_layer} takes {wanted} "
                   f"input channel{'s' if wanted != 1 else ''} but the data "
                   f"{spec.config.data.name!r} has {channels}{origin}; {convert}use a "
                   f"checkpoint made for {channels}-channel images")
