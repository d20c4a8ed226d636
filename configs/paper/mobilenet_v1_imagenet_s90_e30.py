"""MobileNet-V1 on ImageNet (the paper's later tables), 90% conv sparsity, 30 search epochs.

  python -m jackpot_jax search --config=configs/paper/mobilenet_v1_imagenet_s90_e30.py --workdir=DIR \\
      --config.model.checkpoint=mobilenet_v1.pth --config.data.manual_dir=IMAGENET_TARS
"""

from jackpot_jax.config_defaults import paper_imagenet_config


def get_config():
  return paper_imagenet_config("mobilenet_v1", sparsity=0.90, search_epochs=30)
