"""Paper row: ResNet-32 on CIFAR-10, 90% conv sparsity, 30 search epochs (reported top-1 93.7).

  python -m jackpot_jax search --config=configs/paper/resnet32_cifar10_s90_e30.py --workdir=DIR \\
      --config.model.checkpoint=PATH_TO_PRETRAINED.pth
"""

from jackpot_jax.config_defaults import paper_cifar_config


def get_config():
  return paper_cifar_config("resnet32", "cifar10", sparsity=0.90, epochs=30)
