"""Paper row: ResNet-32 on CIFAR-100, 90% conv sparsity, 160 search epochs (reported top-1 73.43).

Searches on the whole training split and keeps the mask of its last step, as the paper
does (data.holdout_images=0, search.selected_on=last_step, no evaluations during the
search).

  python -m jackpot_jax search --config=configs/paper/resnet32_cifar100_s90_e160.py --workdir=DIR \\
      --config.model.checkpoint=PATH_TO_PRETRAINED.pth
"""

from jackpot_jax.config_defaults import paper_cifar_config


def get_config():
  return paper_cifar_config("resnet32", "cifar100", sparsity=0.90, epochs=160)
