"""The shipped tiny Llama and its text: a 2:4 jackpot, and the one-shot baselines at 2:4.

`jackpot search` searches 2:4 masks over every projection of the decoder's blocks, starting
from the magnitude mask, for one epoch of the training text (280 steps of 16 sequences),
SGD on the scores at learning rate 1.0 (docs/results.md compares budgets, starts and
distillation), and reports the jackpot's perplexity beside every baseline's:
  jackpot search --config=llm_tiny --workdir=workdirs/llm_jackpot_24
`jackpot baselines` measures the decoder's perplexity on the held-out test text, dense and
with every projection of its blocks pruned 2:4 by magnitude, Wanda and SparseGPT (its mask
alone, then with its weight update), Wanda and SparseGPT calibrated on 128 training
sequences. Runs offline on a CPU:
  jackpot baselines --config=llm_tiny --workdir=workdirs/llm_tiny_24
  jackpot baselines --config=llm_tiny --workdir=workdirs/llm_tiny_50 \\
      --config.search.pattern=unstructured --config.search.sparsity=0.5
The tokenizer is the model folder's (tokenizer.json); text is packed into 128-token
sequences.
"""

import os

from jackpot_jax.config_defaults import base_config

# Shipped assets are found beside this file, whatever directory the command starts in.
_REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def get_config():
  config = base_config()
  config.model.name = "auto"
  config.model.checkpoint = os.path.join(_REPO, "pretrained", "llm_tiny")
  config.data.name = "text:" + os.path.join(_REPO, "pretrained", "llm_tiny_text")
  config.data.seq_len = 128
  config.search.pattern = "2:4"
  config.eval.perplexity_batch_size = 16
  config.baselines.calibration_sequences = 128
  config.baselines.batch_size = 8
  config.search.batch_size = 16
  config.search.num_epochs = 1.0
  config.search.learning_rate = 1.0
  # Next-token distillation reads the teacher's plain distributions when it is switched on.
  config.search.distill_temperature = 1.0
  config.eval.every_epochs = 0.25
  config.checkpoint.every_steps = 100
  return config
