"""The shipped Fashion-MNIST ViT (`vit_tiny_p4`, HF key layout) searched over its linear layers.

Every Linear layer of the encoder (query, key, value, attention output, both MLP layers) is
masked; the patch embedding and the classifier stay dense, as the pruning literature on
ViTs does; LayerNorm, position embeddings and the class token are never masked. The model
has no BatchNorm, so the search's BN handling does not apply and the magnitude baseline
has no re-estimated variant.
  python -m jackpot_jax search --config=configs/vit_fashion_mnist.py --workdir=workdirs/vit
"""

import os

from jackpot_jax.config_defaults import base_config

_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
  config = base_config()
  config.model.name = "vit_tiny_p4"
  config.model.checkpoint = os.path.join(_REPO, "pretrained", "vit_tiny_fashion_mnist.pth")
  config.model.num_classes = 10
  config.data.name = "fashion_mnist"
  config.data.crop_padding = 2
  config.search.sparsity = 0.7
  config.search.first_layer = "dense"
  config.search.hidden_dense = "plan"
  config.search.num_epochs = 1.0
  config.search.batch_size = 128
  config.search.learning_rate = 0.1
  config.eval.every_epochs = 1.0
  config.checkpoint.every_steps = 200
  return config
