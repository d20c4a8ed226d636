"""The full set of config fields with reference defaults; configs/*.py start from here.

Field names under model, data and search are a contract with users and checks:
keep them, add new ones freely.
"""

from __future__ import annotations

import ml_collections
from ml_collections import config_dict

# Reference normalisation (ALGORITHM.md) and Fashion-MNIST's own statistics.
CIFAR_MEAN, CIFAR_STD = (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010)
IMAGENET_MEAN, IMAGENET_STD = (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)
FASHION_MNIST_MEAN, FASHION_MNIST_STD = (0.2860,), (0.3530,)


def base_config() -> ml_collections.ConfigDict:
  """Every field the library reads, set to the reference (CIFAR) defaults."""
  config = ml_collections.ConfigDict()

  config.model = ml_collections.ConfigDict()
  config.model.name = "resnet32"
  config.model.checkpoint = ""  # path of the pre-trained PyTorch checkpoint
  config.model.num_classes = 10
  config.model.strict = True  # every checkpoint tensor used, every variable filled
  config.model.kwargs = ml_collections.ConfigDict()  # extra builder arguments, e.g. width

  config.data = ml_collections.ConfigDict()
  config.data.name = "cifar10"  # TFDS name, image_folder:<root> or npz:<file>
  config.data.mean = CIFAR_MEAN
  config.data.std = CIFAR_STD
  config.data.image_size = config_dict.placeholder(int)  # None: native size
  config.data.augment = "cifar"  # cifar | imagenet | none
  config.data.crop_padding = 4  # zero pixels around the 'cifar' random crop
  config.data.channels = config_dict.placeholder(int)  # image folders: 1 or 3
  config.data.prefetch = 2  # batches a background thread keeps ready
  config.data.shuffle_buffer = 16_384  # tf.data shuffle buffer of streamed datasets
  config.data.data_dir = config_dict.placeholder(str)  # TFDS data dir; None: TFDS default
  config.data.manual_dir = config_dict.placeholder(str)  # e.g. ImageNet's downloaded tars
  config.data.eval_split = "test"

  config.search = ml_collections.ConfigDict()
  config.search.sparsity = 0.9  # target sparsity over the conv weights
  config.search.sparsity_plan = "l1"  # l1 | uniform | erk
  config.search.classifier = "dense"  # dense | plan
  config.search.first_layer = "plan"  # plan | dense
  config.search.layer_overrides = ml_collections.ConfigDict()  # {"pattern": sparsity}
  config.search.score_init = "magnitude"  # magnitude | magnitude_abs | kaiming | edge_popup | random
  config.search.bn_mode = "recalibrate"  # recalibrate | frozen
  config.search.num_epochs = 30.0  # fractions allowed
  config.search.batch_size = 256
  config.search.seed = 0
  config.search.label_smoothing = 0.0
  config.search.optimizer = "sgd"  # sgd or any optax optimizer name
  config.search.optimizer_kwargs = ml_collections.ConfigDict()
  config.search.learning_rate = 0.1
  config.search.lr_schedule = "cosine"
  config.search.warmup_steps = 0
  config.search.momentum = 0.9
  config.search.nesterov = False
  config.search.weight_decay = 5e-4
  config.search.clip_grad_norm = 0.0

  # Optional "+T" stage: weights fine-tuned with the searched mask fixed.
  config.tune = ml_collections.ConfigDict()
  config.tune.num_epochs = 0.0
  config.tune.batch_size = 256
  config.tune.optimizer = "sgd"
  config.tune.optimizer_kwargs = ml_collections.ConfigDict()
  config.tune.learning_rate = 0.01
  config.tune.lr_schedule = "cosine"
  config.tune.warmup_steps = 0
  config.tune.momentum = 0.9
  config.tune.nesterov = False
  config.tune.weight_decay = 0.0
  config.tune.clip_grad_norm = 0.0
  config.tune.label_smoothing = 0.0

  config.eval = ml_collections.ConfigDict()
  config.eval.batch_size = 500
  config.eval.every_epochs = 1.0  # 0 disables evaluation during the search
  # > 0: end the search at the first evaluation within this of dense accuracy (0.01 = one
  # point); the learning-rate schedule still spans search.num_epochs. 0 runs to the end.
  config.eval.stop_within_dense = 0.0

  config.checkpoint = ml_collections.ConfigDict()
  config.checkpoint.every_steps = 500
  config.checkpoint.keep = 3

  config.mesh = ml_collections.ConfigDict()
  config.mesh.num_devices = 0  # 0: every device of every process
  config.mesh.model = 1  # devices on the FSDP axis; 1 replicates scores and weights
  config.mesh.fsdp = False
  config.mesh.fsdp_min_size = 2 ** 16  # with fsdp: leaves with fewer elements stay replicated

  config.log_every_steps = 50  # metrics are averaged over this window of steps
  config.progress_bar = True
  config.profile_steps = ""  # "A,B": jax.profiler trace of steps A..B into <workdir>/profile
  return config


def imagenet_config() -> ml_collections.ConfigDict:
  """The reference ImageNet settings (ResNet-50 rows of ALGORITHM.md)."""
  config = base_config()
  config.model.name = "resnet50"
  config.model.num_classes = 1000
  config.data.name = "imagenet2012"
  config.data.mean, config.data.std = IMAGENET_MEAN, IMAGENET_STD
  config.data.augment = "imagenet"
  config.data.image_size = 224
  config.data.eval_split = "validation"
  config.search.weight_decay = 1e-4
  config.eval.batch_size = 250
  config.checkpoint.every_steps = 1000
  return config


def paper_cifar_config(model: str, dataset: str, sparsity: float,
                       epochs: float) -> ml_collections.ConfigDict:
  """A CIFAR row of the paper's table: VGG-19 or ResNet-32 (32/64/128 wide), lr 0.1 cosine."""
  config = base_config()
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
  """An ImageNet row: 30 search epochs, optionally followed by 10 weight-tuning epochs."""
  config = imagenet_config()
  config.model.name = model
  config.search.sparsity = sparsity
  config.search.num_epochs = float(search_epochs)
  config.tune.num_epochs = float(tune_epochs)
  return config
