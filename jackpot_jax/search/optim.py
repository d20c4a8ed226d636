"""Optax chains built from config: the score optimizer and the weight-tuning optimizer."""

from __future__ import annotations

from typing import Any

import optax

from jackpot_jax.bounded_cache import BoundedCache


def make_schedule(name: str, learning_rate: float, total_steps: int,
                  warmup_steps: int = 0) -> optax.Schedule:
  """'cosine' decays to 0 over the run (reference); 'constant' keeps the rate."""
  if name == "cosine":
    decay = optax.cosine_decay_schedule(learning_rate, max(total_steps - warmup_steps, 1))
  elif name == "constant":
    decay = optax.constant_schedule(learning_rate)
  else:
    raise ValueError(f"unknown lr_schedule {name!r}; choose 'cosine' or 'constant'")
  if warmup_steps:
    warmup = optax.linear_schedule(0.0, learning_rate, warmup_steps)
    return optax.join_schedules([warmup, decay], [warmup_steps])
  return decay


def learning_rate_of(config: Any, total_steps: int) -> optax.Schedule:
  """The schedule of a config section (search or tune): step -> learning rate."""
  return make_schedule(config.lr_schedule, config.learning_rate, total_steps,
                       config.get("warmup_steps", 0))


# Optimizers already built, by their section's values and length: equal sections give the
# same object, so the steps of later runs that bind it compare equal to earlier ones and
# reuse their compiled programs (`run/loop.py`).
_optimizers = BoundedCache(16)


def make_optimizer(config: Any, total_steps: int) -> optax.GradientTransformation:
  """`build_optimizer`, the same object for a section of equal values (a ConfigDict)."""
  try:
    key = (config.to_json_best_effort(sort_keys=True), total_steps)
  except AttributeError:  # not a ConfigDict: built anew
    return build_optimizer(config, total_steps)
  return _optimizers.get(key, lambda: build_optimizer(config, total_steps))


def build_optimizer(config: Any, total_steps: int) -> optax.GradientTransformation:
  """Builds `add_decayed_weights -> optimizer` from a config section.

  Weight decay is added to the gradient before the optimizer, as PyTorch's SGD does, so
  SGD here reproduces the reference update exactly. `config.optimizer` is "sgd" or the
  name of any optax optimizer (e.g. "adamw"), with extra arguments in
  `config.optimizer_kwargs`.

  Args:
    config: a section with optimizer, learning_rate, lr_schedule, warmup_steps, momentum,
      nesterov, weight_decay, optimizer_kwargs, clip_grad_norm.
    total_steps: length of the schedule.
  """
  schedule = learning_rate_of(config, total_steps)
  parts = []
  if config.get("clip_grad_norm"):
    parts.append(optax.clip_by_global_norm(config.clip_grad_norm))
  if config.weight_decay:
    parts.append(optax.add_decayed_weights(config.weight_decay))
  kwargs = dict(config.get("optimizer_kwargs") or {})
  if config.optimizer == "sgd":
    parts.append(optax.sgd(schedule, momentum=config.momentum or None,
                           nesterov=config.nesterov, **kwargs))
  else:
    factory = getattr(optax, config.optimizer, None)
    if not callable(factory):
      raise ValueError(f"unknown optimizer {config.optimizer!r}; use 'sgd' or an optax optimizer name")
    parts.append(factory(schedule, **kwargs))
  return optax.chain(*parts)


def check_section(part: Any, section: str) -> None:
  """Raises ValueError (one line) for a search or tune section no run could train with:
  its batch size, epochs, learning rate, or an optimizer its arguments do not fit."""
  if part.batch_size < 1:
    raise ValueError(f"{section}.batch_size must be positive, got {part.batch_size}")
  if part.num_epochs < 0:
    raise ValueError(f"{section}.num_epochs must be >= 0, got {part.num_epochs}")
  if part.learning_rate <= 0:
    raise ValueError(f"{section}.learning_rate must be positive, got {part.learning_rate}")
  try:  # builds the optax chain only: names and arguments are checked, nothing runs
    build_optimizer(part, 1)
  except TypeError as error:
    raise ValueError(f"{section}.optimizer_kwargs do not fit {section}.optimizer "
                     f"{part.optimizer!r}: {error}") from error
