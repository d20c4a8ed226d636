"""Every config field, declared once: its default and a one-line doc. configs/*.py start here.

Field names are a contract with users and checks: keep them, add new ones freely. A new
field is one row of `FIELDS`; `run.spec.resolve` is the one place that validates it.
`describe()` lists every field with its doc (`python -m jackpot_jax.config_defaults`).
"""

from __future__ import annotations

from typing import Any

import ml_collections
from ml_collections import config_dict

# The normalisations the usual training recipes (and the paper's code) use, on the [0, 1]
# scale. CIFAR-10's std is the reference code's (0.2023, ...), not the true pixel std.
STANDARD_STATISTICS = {
    "fashion_mnist": ((0.2860,), (0.3530,)),
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "imagenet2012": ((0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
CIFAR_MEAN, CIFAR_STD = STANDARD_STATISTICS["cifar10"]
IMAGENET_MEAN, IMAGENET_STD = STANDARD_STATISTICS["imagenet2012"]
FASHION_MNIST_MEAN, FASHION_MNIST_STD = STANDARD_STATISTICS["fashion_mnist"]


class _Unset:
  """A default of None that later takes values of `type` (a fresh placeholder per config:
  a shared one would carry one config's value into the next)."""

  def __init__(self, type_: type):
    self.type = type_

  def __repr__(self) -> str:
    return "None"


def _optimizer_fields(section: str, learning_rate: float, weight_decay: float,
                      what: str) -> list[tuple[str, Any, str]]:
  """The optimizer rows the search and the tuning stage share, for `what` is trained."""
  return [
      (f"{section}.optimizer", "sgd", f"optimizer of the {what}: sgd or any optax name"),
      (f"{section}.optimizer_kwargs", {}, "extra arguments of that optax optimizer"),
      (f"{section}.learning_rate", learning_rate, "peak learning rate"),
      (f"{section}.lr_schedule", "cosine", "cosine (to 0 over the run, per step) | constant"),
      (f"{section}.warmup_steps", 0, "linear warm-up steps before the schedule"),
      (f"{section}.momentum", 0.9, "SGD momentum"),
      (f"{section}.nesterov", False, "Nesterov momentum for SGD"),
      (f"{section}.weight_decay", weight_decay, f"L2 weight decay on the {what}"),
      (f"{section}.clip_grad_norm", 0.0, "clip the global gradient norm to this; 0 disables"),
      (f"{section}.label_smoothing", 0.0, "label smoothing of the cross-entropy"),
  ]


# (dotted key, default, one-line doc).
FIELDS: list[tuple[str, Any, str]] = [
    ("model.name", "resnet32", "registry name of the network (jackpot_jax.models); auto: "
     "the one a Hugging Face checkpoint folder's config.json describes"),
    ("model.checkpoint", "", "the pre-trained PyTorch checkpoint: a .pth/.safetensors file "
     "or a Hugging Face model folder (config.json and its weights)"),
    ("model.num_classes", 10, "classes of the classifier; 0: a Hugging Face checkpoint "
     "folder's number of labels"),
    ("model.strict", True, "every checkpoint tensor used and every variable filled"),
    ("model.kwargs", {}, "extra builder arguments of the model, e.g. width"),
    ("model.dtype", "float32", "activation dtype: float32 | bfloat16 (weights, scores and "
     "BN statistics stay float32)"),

    ("data.name", "cifar10", "TFDS name (or tfds:<name>), image_folder:<root>, npz:<file>; "
     "language models: text:<dir>, tokens:<dir> or tfds_text:<TFDS name>"),
    ("data.mean", _Unset(tuple), "per-channel mean on the [0, 1] scale; None: a known "
     "dataset's standard one (fashion_mnist, cifar10, cifar100, imagenet2012), else "
     "estimated from up to 5,000 training images"),
    ("data.std", _Unset(tuple), "per-channel std on the [0, 1] scale; None: as data.mean"),
    ("data.image_size", _Unset(int), "square side the model sees; None: native (224 with "
     "imagenet augmentation)"),
    ("data.augment", _Unset(str), "a registered augmentation (jackpot_jax.data.transforms."
     "augmentation_names(); cifar: pad and crop, flip); None: a known dataset's standard "
     "one, else by image size (cifar up to 64 px, imagenet above)"),
    ("data.crop_padding", 4, "zero pixels around the 'cifar' random crop"),
    ("data.channels", _Unset(int), "1 or 3, converting images that have the other; None: "
     "the data's own (image folders: 3 if a sampled image has colour)"),
    ("data.prefetch", 2, "batches the input pipeline keeps ready (per worker); 0: none"),
    ("data.workers", 0, "Grain worker processes decoding and augmenting; 0: threads of "
     "the search process"),
    ("data.cache_limit_mb", 4096, "TFDS splits of fixed-size images whose decoded pixels "
     "fit in this many MB are decoded once and kept in memory; 0: decode on every read"),
    ("data.shuffle_buffer", 16_384, "unused: the Grain pipeline shuffles whole splits; "
     "kept so that existing command lines run"),
    ("data.train_split", "train", "split the search trains on (less the held-out images); "
     "a slice in TFDS's notation reads part of it: 'train[:50%]', 'train[1000:]'"),
    ("data.data_dir", _Unset(str), "TFDS data dir; None: TFDS's default"),
    ("data.manual_dir", _Unset(str), "manually downloaded archives (ImageNet)"),
    ("data.eval_split", "test", "split the accuracies are measured on; 'test' reads "
     "'validation' (TFDS) or val/ (image folders) where there is no test split; "
     "'test[:2000]' or 'test[:20%]' measures a slice of it"),
    ("data.holdout_images", _Unset(int),
     "training images held out of the search for its evaluations and early stopping; "
     "None: min(5000, 10%); 0: none"),
    ("data.seq_len", 128, "text data: tokens per packed sequence (documents joined by the "
     "end-of-text token, cut into non-overlapping sequences, the remainder dropped)"),
    ("data.tokenizer", _Unset(str), "text data: a Hugging Face tokenizer folder (tokenizer.json); "
     "None: model.checkpoint's folder"),
    ("data.holdout_sequences", _Unset(int), "text data: training sequences held out of the "
     "search for its evaluations; None: min(5000, 10%); 0: none"),
    ("data.token_cache_dir", "auto", "text data: folder of the token stores (each split "
     "tokenized once); auto: $XDG_CACHE_HOME (~/.cache)/jackpot_jax/tokens"),
    ("data.text_feature", "text", "tfds_text data: the string feature holding a document "
     "(one document per example)"),

    ("search.sparsity", 0.9, "target sparsity over the weights the plan pools (the "
     "convs by default; every hidden Linear too with hidden_dense=plan)"),
    ("search.pattern", "unstructured",
     "unstructured | N:M (e.g. 2:4): keep N of every M consecutive input channels at "
     "each kernel position (NVIDIA ASP's grouping); N:M implies the plan, so sparsity, "
     "sparsity_plan and layer_overrides are not given with it"),
    ("search.sparsity_plan", "l1", "how sparsity spreads over layers: a registered plan "
     "(jackpot_jax.search.sparsity.plan_names(); l1: one global magnitude threshold, the reference)"),
    ("search.classifier", "dense", "dense | plan: whether the classifier is masked"),
    ("search.first_layer", "plan", "plan | dense: whether the first conv is masked"),
    ("search.hidden_dense", "dense", "dense | plan: whether hidden Linear layers are masked"),
    ("search.layer_overrides", {}, "{layer name pattern: sparsity} beside the plan"),
    ("search.score_init", "magnitude", "how the scores start: a registered init "
     "(jackpot_jax.search.scores.score_init_names(); magnitude: the magnitude mask, the reference)"),
    ("search.bn_mode", "recalibrate", "recalibrate (train-mode BN statistics) | frozen"),
    ("search.bn_momentum", 0.1, "recalibrate: weight of each batch in BN's running "
     "statistics (PyTorch's convention: the reference's 0.1 is Flax's momentum 0.9)"),
    ("search.bn_statistics", "running", "running: the jackpot keeps the BN statistics the "
     "search's train-mode passes ran up (the reference) | reestimated: every evaluation and "
     "the result re-estimate them for the mask on eval.recalibration_images training images, "
     "as magnitude_recalibrated does"),
    ("search.distill_weight", 0.0, "w of the loss (1 - w) * CE + w * T^2 * KL(dense teacher "
     "|| masked student); 0: no distillation, no teacher pass (the reference)"),
    ("search.distill_temperature", 4.0, "T of that distillation (Hinton et al. 2015); 4 is "
     "the usual CIFAR choice (steps.distillation_loss)"),
    ("search.feature_distill_weight", 0.0, "adds this multiple of a per-block feature loss "
     "against the dense network: each block output's squared error relative to the dense "
     "one's (block_targets.feature_loss), blocks as the model names them; 0: off (the "
     "reference)"),
    ("search.local_fraction", 0.0, "the first this fraction of the search's steps trains "
     "every block to reproduce the dense block's output from the dense block's input (the "
     "feature loss alone), then the end-to-end search continues from those scores; 0: off "
     "(the reference)"),
    ("search.selected_on", _Unset(str), "holdout: the jackpot is the evaluated state with "
     "the best held-out accuracy, the start (step 0) included, ties to the later | "
     "last_step: the state at the last step (the reference); None: holdout when the search "
     "evaluates on held-out images (data.holdout_images and eval.every_epochs > 0), else "
     "last_step"),
    ("search.sparsity_ramp", 0.0, "fraction of the search's steps over which each "
     "layer's keep count anneals cubically (Zhu & Gupta 2017) from its count at "
     "start_sparsity to the plan's, then stays there; 0: the plan's from the start (the "
     "reference); unstructured image searches only"),
    ("search.start_sparsity", 0.0, "with sparsity_ramp: where the ramp starts; each layer "
     "prunes start_sparsity / sparsity of its planned count (rounded down; 0: dense), and "
     "magnitude scores start on that layer's magnitude mask"),
    ("search.max_flips_per_step", 0, "the authors' short restriction: at most this many "
     "weights swap in (and out) per layer and step, the best-ranked newcomers for the "
     "worst-ranked incumbents, the cap decaying as ceil(max * (1 - t/T)^4) to 1 "
     "(schedules.FlipCap); 0: off (the reference); unstructured only"),
    ("search.flips_per_layer", False, "also log each layer's mask flips per step "
     "(mask_flips/<layer>; they sum to mask_flips)"),
    ("search.num_epochs", 30.0, "search length in epochs; fractions allowed"),
    ("search.batch_size", 256, "global search batch size"),
    ("search.seed", 0, "seed of the scores' init and the batch order"),
    *_optimizer_fields("search", 0.1, 5e-4, "scores"),

    ("tune.num_epochs", 0.0, "epochs of the '+T' stage (weights tuned, mask fixed); 0: none"),
    ("tune.batch_size", 256, "global batch size of the tuning stage"),
    *_optimizer_fields("tune", 0.01, 0.0, "weights"),

    ("eval.batch_size", 500, "evaluation batch size (rounded up to the device count)"),
    ("eval.every_epochs", 1.0, "evaluate the jackpot this often during the search; 0: never"),
    ("eval.stop_within_dense", 0.0,
     "> 0: end at the first held-out evaluation after the start within this of dense "
     "(0.01 = one point)"),
    ("eval.recalibration_images", 2048,
     "training images the magnitude baseline's BN statistics are re-estimated on "
     "(whole search batches); 0: skip"),
    ("eval.wanda_images", 512,
     "N:M runs: training images the Wanda baseline's input norms are taken over "
     "(whole search batches); 0: skip"),
    ("eval.perplexity_batch_size", 8, "language models: sequences per perplexity batch "
     "(rounded up to the device count)"),

    ("baselines.methods", ("magnitude", "wanda", "sparsegpt"), "language models: the "
     "one-shot baselines `jackpot baselines` measures, registered names "
     "(jackpot_jax.baselines.llm_oneshot.llm_baseline_names())"),
    ("baselines.calibration_sequences", 128, "language models: searched training sequences "
     "the one-shot baselines calibrate on (Wanda's and SparseGPT's 128; "
     "jackpot_jax.data.text.calibration_sequences)"),
    ("baselines.seed", 0, "seed of the draw of those calibration sequences"),
    ("baselines.batch_size", 8, "calibration sequences per pass through a decoder block: a "
     "divisor of baselines.calibration_sequences and a multiple of the device count"),

    ("checkpoint.every_steps", 500, "save a checkpoint this often"),
    ("checkpoint.keep", 3, "checkpoints kept per stage"),

    ("mesh.num_devices", 0, "devices to use; 0: every device of every process"),
    ("mesh.model", 1, "devices on the FSDP axis; 1 replicates scores and weights"),
    ("mesh.fsdp", False, "shard large leaves over the model axis"),
    ("mesh.fsdp_min_size", 2 ** 16, "with fsdp: leaves with fewer elements stay replicated"),

    ("log_every_steps", 50, "metrics are averaged over this window of steps"),
    ("progress_bar", True, "show a progress line on stderr"),
    ("profile_steps", "", "'A,B': jax.profiler trace of steps A..B into <workdir>/profile"),
    ("compilation_cache_dir", "auto", "folder (or gs://) of JAX's persistent compilation "
     "cache; auto: $JAX_COMPILATION_CACHE_DIR, else $XDG_CACHE_HOME (~/.cache)/jackpot_jax/xla; "
     "none: off"),
]

DOCS = {key: doc for key, _, doc in FIELDS}


def base_config() -> ml_collections.ConfigDict:
  """Every field the library reads, set to the reference (CIFAR) defaults; data
  preprocessing left None follows the dataset."""
  config = ml_collections.ConfigDict()
  for key, default, _ in FIELDS:
    *parents, leaf = key.split(".")
    section = config
    for parent in parents:
      if parent not in section:
        section[parent] = ml_collections.ConfigDict()
      section = section[parent]
    if isinstance(default, _Unset):
      default = config_dict.placeholder(default.type)
    section[leaf] = ml_collections.ConfigDict() if default == {} else default
  return config


def describe() -> str:
  """Every field with its default and doc, one a line."""
  config = base_config()
  lines = []
  for key, _, doc in FIELDS:
    value = config
    for part in key.split("."):
      value = value[part]
    shown = dict(value) if isinstance(value, ml_collections.ConfigDict) else value
    lines.append(f"{key} = {shown!r}  # {doc}")
  return "\n".join(lines)


def imagenet_config() -> ml_collections.ConfigDict:
  """The reference ImageNet settings (the ResNet-50 rows of docs/algorithm.md)."""
  config = base_config()
  config.model.name = "resnet50"
  config.model.num_classes = 1000
  # Statistics, augmentation and the 224 crop are imagenet2012's standard ones (data.*
  # left None), so that another data.name brings its own.
  config.data.name = "imagenet2012"
  config.data.eval_split = "validation"
  # Decoding and cropping full-size JPEGs takes several cores per accelerator.
  config.data.workers = 8
  config.search.weight_decay = 1e-4
  config.eval.batch_size = 250
  config.checkpoint.every_steps = 1000
  return config


def _as_the_paper_selects(config: ml_collections.ConfigDict) -> ml_collections.ConfigDict:
  """The paper's protocol: the search sees the whole training split (no held-out slice,
  hence no evaluations during it) and the jackpot is the mask of its last step."""
  config.data.holdout_images = 0
  config.eval.every_epochs = 0.0
  config.search.selected_on = "last_step"
  return config


def paper_cifar_config(model: str, dataset: str, sparsity: float,
                       epochs: float) -> ml_collections.ConfigDict:
  """A CIFAR row of the paper's table: VGG-19 or ResNet-32 (32/64/128 wide), lr 0.1 cosine,
  searched on all 50,000 training images and kept at its last step, as the paper does."""
  config = _as_the_paper_selects(base_config())
  config.model.name = model
  if model == "resnet32":
    config.model.kwargs.width = 2
  config.model.num_classes = 100 if dataset == "cifar100" else 10
  config.data.name = dataset
  config.search.sparsity = sparsity
  config.search.num_epochs = float(epochs)
  return config


def paper_imagenet_config(model: str, sparsity: float, search_epochs: float,
                          tune_epochs: float = 0.0) -> ml_collections.ConfigDict:
  """An ImageNet row: 30 search epochs, optionally followed by 10 weight-tuning epochs;
  searched on the whole training split and kept at its last step, as the paper does."""
  config = _as_the_paper_selects(imagenet_config())
  config.model.name = model
  config.search.sparsity = sparsity
  config.search.num_epochs = float(search_epochs)
  config.tune.num_epochs = float(tune_epochs)
  return config


if __name__ == "__main__":
  print(describe())
