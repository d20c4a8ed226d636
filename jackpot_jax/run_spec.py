"""The run spec: a config validated once and frozen, built at start and passed down.

`resolve(config)` is the one place a config is checked, before anything heavy loads;
every check fails with one line naming the field and what to do. `check_fit` adds the
checks that need the dataset's shape and the device count, before the checkpoint loads.
"""

from __future__ import annotations

import dataclasses

import ml_collections

from jackpot_jax import (compilation_cache, fileio, masking, models, optim, parallel, profiling,
                         scores, sparsity, steps)
from jackpot_jax.data.config import DatasetInfo, DataSpec, resolve_spec


@dataclasses.dataclass(frozen=True)
class RunSpec:
  """What a run computes: the frozen config with its data and model resolved."""

  config: ml_collections.FrozenConfigDict
  data: DataSpec
  model: models.ModelSpec
  profile_steps: tuple[int, int] | None


def _choice(value, allowed, field: str) -> None:
  if value not in allowed:
    raise ValueError(f"unknown {field} {value!r}; choose one of {', '.join(map(str, allowed))}")


def _check_training_section(config: ml_collections.ConfigDict, section: str) -> None:
  part = config[section]
  if part.batch_size < 1:
    raise ValueError(f"{section}.batch_size must be positive, got {part.batch_size}")
  if part.num_epochs < 0:
    raise ValueError(f"{section}.num_epochs must be >= 0, got {part.num_epochs}")
  if part.learning_rate <= 0:
    raise ValueError(f"{section}.learning_rate must be positive, got {part.learning_rate}")
  try:  # builds the optax chain only: names and arguments are checked, nothing runs
    optim.make_optimizer(part, 1)
  except TypeError as error:
    raise ValueError(f"{section}.optimizer_kwargs do not fit {section}.optimizer "
                     f"{part.optimizer!r}: {error}") from error


def _check(config: ml_collections.ConfigDict) -> None:
  """Rejects values no run could use, naming the field and what to do."""
  if not config.model.checkpoint:
    raise ValueError("model.checkpoint is empty; pass --config.model.checkpoint=PATH to a "
                     "pre-trained PyTorch checkpoint")
  fileio.as_path(config.model.checkpoint, "model.checkpoint")
  _choice(config.model.dtype, parallel.IMAGE_DTYPES, "model.dtype")
  if config.model.num_classes < 1:
    raise ValueError(f"model.num_classes must be positive, got {config.model.num_classes}")
  search = config.search
  if not 0.0 <= search.sparsity < 1.0:
    raise ValueError(f"search.sparsity must be in [0, 1), got {search.sparsity}")
  _choice(search.sparsity_plan, sparsity.PLANS, "search.sparsity_plan")
  pattern = masking.parse_pattern(search.pattern)
  if pattern is not None and (search.sparsity_plan != "l1" or search.layer_overrides):
    raise ValueError(f"search.pattern={pattern} sets every masked layer's sparsity; drop "
                     "search.sparsity_plan and search.layer_overrides, or set "
                     "search.pattern=unstructured")
  _choice(search.score_init, scores.SCORE_INITS, "search.score_init")
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
  if not 0.0 <= search.distill_weight <= 1.0:
    raise ValueError(f"search.distill_weight must be in [0, 1] (0: no distillation), got "
                     f"{search.distill_weight}")
  if search.distill_temperature <= 0:
    raise ValueError(f"search.distill_temperature must be positive, got "
                     f"{search.distill_temperature}")
  _choice(search.classifier, sparsity.LAYER_POLICIES, "search.classifier")
  _choice(search.first_layer, sparsity.LAYER_POLICIES, "search.first_layer")
  _choice(search.hidden_dense, sparsity.LAYER_POLICIES, "search.hidden_dense")
  for section in ("search", "tune"):
    _check_training_section(config, section)
  if config.eval.batch_size < 1:
    raise ValueError(f"eval.batch_size must be positive, got {config.eval.batch_size}")
  if config.eval.stop_within_dense < 0:
    raise ValueError(f"eval.stop_within_dense must be >= 0 (0 disables), got "
                     f"{config.eval.stop_within_dense}")
  if config.eval.stop_within_dense > 0 and config.eval.every_epochs <= 0:
    raise ValueError("eval.stop_within_dense needs evaluations during the search; set "
                     "eval.every_epochs > 0")
  for field in ("recalibration_images", "wanda_images"):
    if config.eval[field] < 0:
      raise ValueError(f"eval.{field} must be >= 0 (0 skips), got {config.eval[field]}")
  if config.checkpoint.every_steps < 1 or config.checkpoint.keep < 1:
    raise ValueError("checkpoint.every_steps and checkpoint.keep must be positive")
  if config.log_every_steps < 1:
    raise ValueError(f"log_every_steps must be positive, got {config.log_every_steps}")
  compilation_cache.check(config.compilation_cache_dir)


def resolve(config: ml_collections.ConfigDict) -> RunSpec:
  """Validates `config` once and freezes it with its resolved data and model specs."""
  model = models.get_model_spec(config.model.name)
  _check(config)
  return RunSpec(config=ml_collections.FrozenConfigDict(config),
                 data=resolve_spec(config.data), model=model,
                 profile_steps=profiling.parse_profile_steps(config.profile_steps))


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
