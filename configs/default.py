"""Built-in default: the shipped Fashion-MNIST ResNet-20 searched to 90% conv sparsity.

Runs offline on a 2-core CPU in minutes:
  python -m jackpot_jax search --config=configs/default.py --workdir=workdirs/default
The data's channels, statistics and augmentation are left to data.name (Fashion-MNIST's
standard ones here), so --config.data.name=image_folder:<root> brings the folder's own.
"""

import os

from jackpot_jax.config_defaults import base_config

# Shipped assets are found beside this file, whatever directory the command starts in
# (launch scripts and schedulers rarely start in the repository).
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
  config = base_config()
  config.model.name = "resnet20"
  config.model.checkpoint = os.path.join(_REPO, "pretrained", "resnet20_fashion_mnist.pth")
  config.model.num_classes = 10
  config.data.name = "fashion_mnist"
  config.search.sparsity = 0.9
  config.search.num_epochs = 2.0
  config.search.batch_size = 128
  config.search.learning_rate = 0.1
  config.eval.every_epochs = 1.0
  config.checkpoint.every_steps = 200
  return config
