"""MobileNet-V1 on ImageNet (the paper's later tables), 90% conv sparsity, 30 search epochs.

Searches on the whole training split and keeps the mask of its last step, as the paper
does (data.holdout_images=0, search.selected_on=last_step, no evaluations during the
search).

  python -m jackpot_jax search --config=configs/paper/mobilenet_v1_imagenet_s90_e30.py --workdir=DIR \\
      --config.model.checkpoint=mobilenet_v1.pth --config.data.manual_dir=IMAGENET_TARS
"""

from jackpot_jax.config_defaults import paper_imagenet_config


def get_config():
  return paper_imagenet_config("mobilenet_v1", sparsity=0.90, search_epochs=30)
