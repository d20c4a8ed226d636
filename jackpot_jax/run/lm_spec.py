"""A language-model config validated once: the decoder folder, its text data, the pruning
target and the one-shot baselines to run (`jackpot baselines`).

`resolve(config)` checks everything that needs neither the weights nor the text, each in
one line naming the field and the fix, before anything heavy loads (the text and the
tokenizer are checked when the job opens them, the vocabulary once the model is built);
`resolve_search(config)` also checks the search's fields (`jackpot search` on a decoder).
`is_language_model(config)` is how `jackpot search` tells the two searches apart.
"""

from __future__ import annotations

import copy
import dataclasses
from pathlib import Path
from typing import Any

import ml_collections

from jackpot_jax import fileio, models
from jackpot_jax.baselines.layer_masks import Sparsity
from jackpot_jax.baselines.llm_oneshot import LLM_BASELINE_REGISTRY
from jackpot_jax.data.config import TEXT_KINDS, DataSpec, resolve_spec
from jackpot_jax.pytorch import hf_folder
from jackpot_jax.pytorch.hf_decoders import CONFIG, decoder_model_types, decoder_spec
from jackpot_jax.run import compilation_cache, profiling
from jackpot_jax.search import block_targets, masking, optim, schedules, steps

_FOLDER = "a Hugging Face decoder folder (config.json, model.safetensors, tokenizer.json)"
_BASELINES_COMMAND = ("`jackpot baselines --config=... --workdir=DIR` measures a language "
                      "model's one-shot baselines (magnitude, Wanda, SparseGPT)")


@dataclasses.dataclass(frozen=True)
class BaselinesSpec:
  """What `jackpot baselines` computes.

  Attributes:
    config: the frozen config, model.name resolved to the folder's registered decoder.
    data: the text data's spec (the tokenizer resolved: data.tokenizer or the folder).
    folder: the decoder folder (model.checkpoint).
    hf_config: its config.json.
    target: the fraction of every maskable projection pruned (search.sparsity), or the
      N:M pattern (search.pattern).
    methods: the registered baselines to run, in order.
  """

  config: ml_collections.FrozenConfigDict
  data: DataSpec
  folder: Path
  hf_config: dict[str, Any]
  target: Sparsity
  methods: tuple[str, ...]


def _decoder_model_type(path: fileio.AnyPath) -> str | None:
  """config.json's model_type where `path` is a folder of a decoder this package reads."""
  if not (path / CONFIG).is_file():
    return None
  model_type = hf_folder.read_config(path).get("model_type")
  return model_type if model_type in decoder_model_types() else None


def _language_model(config: ml_collections.ConfigDict) -> str | None:
  """Why `config` names a language model (a registered decoder as model.name, or a decoder
  folder as model.checkpoint), or None where it does not."""
  name = config.model.name
  if name in models.model_names() and models.get_model_spec(name).inputs == "tokens":
    return f"model.name={name!r} is a language model"
  checkpoint = config.model.checkpoint
  path = fileio.as_path(checkpoint, "model.checkpoint") if checkpoint else None
  if path is not None and hf_folder.is_model_folder(path):
    model_type = _decoder_model_type(path)
    if model_type is not None:
      return f"model.checkpoint {checkpoint} holds a {model_type} language model"
  return None


def is_language_model(config: ml_collections.ConfigDict) -> bool:
  """Whether `config` names a decoder language model (by name or by checkpoint folder)."""
  return _language_model(config) is not None


def check_not_language_model(config: ml_collections.ConfigDict) -> None:
  """Raises ValueError (one line) when `config` names a language model: the image
  search's set-up calls it first, so a decoder never reaches the image path."""
  reason = _language_model(config)
  if reason is not None:
    raise ValueError(f"{reason}; the image search cannot run it: `jackpot search` runs it "
                     f"through the language-model search, and {_BASELINES_COMMAND}")


def _folder(checkpoint: str) -> Path:
  """model.checkpoint as a local decoder folder with a config.json."""
  if not checkpoint:
    raise ValueError(f"model.checkpoint is empty; pass --config.model.checkpoint=DIR, {_FOLDER}")
  if fileio.is_cloud(checkpoint):
    raise ValueError(f"model.checkpoint {checkpoint} is in a bucket; language models are read "
                     "from local disk: copy the folder there")
  folder = Path(checkpoint).expanduser()
  if not folder.is_dir():
    raise ValueError(f"model.checkpoint {folder} is not a folder; `jackpot baselines` reads "
                     f"{_FOLDER}")
  if not (folder / CONFIG).is_file():
    raise ValueError(f"model.checkpoint {folder} has no {CONFIG}; `jackpot baselines` reads "
                     f"{_FOLDER}")
  return folder


def _model_type_checked(folder: Path, hf_config: dict[str, Any]) -> str:
  """The registered decoder's name; an unsupported model_type is a one-line error."""
  model_type = hf_config.get("model_type")
  if model_type not in decoder_model_types():
    raise ValueError(f"model.checkpoint {folder}: config.json's model_type {model_type!r} is "
                     f"not a language model this package reads; supported: "
                     f"{', '.join(decoder_model_types())}")
  return decoder_spec(hf_config).name


def search_target(search: ml_collections.ConfigDict) -> Sparsity:
  """search.pattern's N:M pattern, else search.sparsity (unstructured)."""
  pattern = masking.parse_pattern(search.pattern)
  if pattern is not None:
    return pattern
  sparsity = search.sparsity
  if isinstance(sparsity, bool) or not isinstance(sparsity, (int, float)) or not (
      0.0 <= sparsity < 1.0):
    raise ValueError(f"search.sparsity must be in [0, 1), got {sparsity!r}")
  return float(sparsity)


def _methods(methods: Any) -> tuple[str, ...]:
  """baselines.methods: registered names, at least one, each once."""
  names = (methods,) if isinstance(methods, str) else tuple(methods or ())
  if not names:
    raise ValueError("baselines.methods is empty; name at least one of "
                     f"{', '.join(LLM_BASELINE_REGISTRY.names())}")
  for name in names:
    try:
      LLM_BASELINE_REGISTRY.check(name)
    except ValueError as error:
      raise ValueError(f"baselines.methods: {error}") from error
  repeated = sorted({name for name in names if names.count(name) > 1})
  if repeated:
    raise ValueError(f"baselines.methods names {', '.join(repeated)} more than once")
  return names


def _positive(value: Any, field: str) -> int:
  if isinstance(value, bool) or not isinstance(value, int) or value < 1:
    raise ValueError(f"{field} must be a positive whole number, got {value!r}")
  return value


def _check_counts(config: ml_collections.ConfigDict) -> None:
  baselines = config.baselines
  sequences = _positive(baselines.calibration_sequences, "baselines.calibration_sequences")
  batch_size = _positive(baselines.batch_size, "baselines.batch_size")
  if sequences % batch_size:
    raise ValueError(f"baselines.batch_size={batch_size} does not divide the {sequences} "
                     "calibration sequences (baselines.calibration_sequences); choose a divisor")
  if isinstance(baselines.seed, bool) or not isinstance(baselines.seed, int):
    raise ValueError(f"baselines.seed must be a whole number, got {baselines.seed!r}")
  _positive(config.eval.perplexity_batch_size, "eval.perplexity_batch_size")


def resolve(config: ml_collections.ConfigDict) -> BaselinesSpec:
  """Validates a language-model config for `jackpot baselines` and freezes it.

  Raises:
    ValueError (one line): model.checkpoint is not a local folder with a config.json, its
      model_type is not a decoder this package reads, model.name names another model,
      data.name is not text data, or a target, method or count no run could use.
  """
  folder = _folder(config.model.checkpoint)
  hf_config = hf_folder.read_config(folder)
  name = _model_type_checked(folder, hf_config)
  if config.model.name not in (hf_folder.AUTO, name):
    raise ValueError(f"model.name={config.model.name!r} but model.checkpoint {folder} holds a "
                     f"{hf_config['model_type']} decoder; set --config.model.name="
                     f"{hf_folder.AUTO} to take the folder's")
  if config.model.dtype != "float32":
    raise ValueError(f"model.dtype={config.model.dtype!r}: the language-model baselines run "
                     "in float32; set --config.model.dtype=float32")
  target = search_target(config.search)
  methods = _methods(config.baselines.methods)
  _check_counts(config)
  compilation_cache.check(config.compilation_cache_dir)
  data = resolve_spec(config.data, str(folder))
  if data.kind not in TEXT_KINDS:
    raise ValueError(f"data.name={config.data.name} is not text; the language-model baselines "
                     "read data.name=text:<dir> or tokens:<dir>")
  config = copy.deepcopy(config)
  with config.unlocked():
    config.model.name = name
  return BaselinesSpec(config=ml_collections.FrozenConfigDict(config), data=data,
                       folder=folder, hf_config=hf_config, target=target, methods=methods)


# search.selected_on's choices, as the image search's.
SELECTIONS = ("holdout", "last_step")
# Image-search fields with no meaning for a decoder: set to anything but their default,
# the search refuses rather than ignore them.
_IMAGE_ONLY = {"search.sparsity_plan": "l1", "search.bn_mode": "recalibrate",
               "search.bn_statistics": "running", "search.label_smoothing": 0.0,
               "tune.num_epochs": 0.0, "eval.stop_within_dense": 0.0}


def _evaluates_on_holdout(config: ml_collections.ConfigDict) -> bool:
  holdout = config.data.holdout_sequences
  return (holdout is None or holdout > 0) and config.eval.every_epochs > 0


def selected_on(config: ml_collections.ConfigDict) -> str:
  """search.selected_on resolved: None is holdout when the search evaluates itself on
  held-out training sequences, else last_step."""
  chosen = config.search.selected_on
  if chosen is None:
    return "holdout" if _evaluates_on_holdout(config) else "last_step"
  return chosen


def selects_on_holdout(config: ml_collections.ConfigDict) -> bool:
  return selected_on(config) == "holdout"


def profile_steps(config: ml_collections.ConfigDict) -> tuple[int, int] | None:
  return profiling.parse_profile_steps(config.profile_steps)


def _check_search(config: ml_collections.ConfigDict) -> None:
  """The search's own fields, each in one line naming the field and the fix."""
  search = config.search
  for key, default in _IMAGE_ONLY.items():
    section, field = key.split(".")
    if config[section][field] != default:
      raise ValueError(f"{key}={config[section][field]!r} has no meaning for a language "
                       f"model's search; leave it at {default!r}")
  if search.layer_overrides:
    raise ValueError("search.layer_overrides: a language model's search prunes every block "
                     "projection at search.sparsity or search.pattern; drop the overrides")
  if search.score_init not in LLM_BASELINE_REGISTRY.names():
    raise ValueError(f"search.score_init={search.score_init!r}: a language model's search "
                     f"starts from a one-shot mask; choose one of "
                     f"{', '.join(LLM_BASELINE_REGISTRY.names())}")
  optim.check_section(search, "search")
  if search.num_epochs <= 0:
    raise ValueError(f"search.num_epochs must be positive, got {search.num_epochs}")
  steps.check_distillation(search)
  block_targets.check_fields(search)  # every decoder family names its decoder layers
  schedules.check_levers(search, ramp_allowed=False,
                         why_no_ramp="a language model's search starts from a one-shot "
                         "mask at the target, so it has no sparsity ramp")
  if search.selected_on is not None and search.selected_on not in SELECTIONS:
    raise ValueError(f"search.selected_on={search.selected_on!r}: choose one of "
                     f"{', '.join(SELECTIONS)}")
  if search.selected_on == "holdout" and not _evaluates_on_holdout(config):
    raise ValueError("search.selected_on=holdout picks the jackpot by held-out perplexity, "
                     f"but data.holdout_sequences={config.data.holdout_sequences} and "
                     f"eval.every_epochs={config.eval.every_epochs} make no evaluation; set "
                     "both > 0, or search.selected_on=last_step")
  if config.checkpoint.every_steps < 1 or config.checkpoint.keep < 1:
    raise ValueError("checkpoint.every_steps and checkpoint.keep must be positive")
  if config.log_every_steps < 1:
    raise ValueError(f"log_every_steps must be positive, got {config.log_every_steps}")
  profile_steps(config)


def resolve_search(config: ml_collections.ConfigDict) -> BaselinesSpec:
  """`resolve`, and the search's fields checked: what `jackpot search` on a decoder runs.
  search.score_init names the one-shot baseline whose mask the scores start from."""
  _check_search(config)
  return resolve(config)
