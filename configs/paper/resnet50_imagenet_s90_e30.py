"""Paper row: ResNet-50 on ImageNet, 90% conv sparsity, 30 search epochs (reported top-1 72.43).

Searches on the whole training split and keeps the mask of its last step, as the paper
does (data.holdout_images=0, search.selected_on=last_step, no evaluations during the
search).

  python -m jackpot_jax search --config=configs/paper/resnet50_imagenet_s90_e30.py --workdir=DIR \\
      --config.model.checkpoint=resnet50.pth --config.data.manual_dir=IMAGENET_TARS
"""

from jackpot_jax.config_defaults import paper_imagenet_config


def get_config():
  return paper_imagenet_config("resnet50", sparsity=0.90, search_epochs=30, tune_epochs=0)
