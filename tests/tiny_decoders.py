"""Tiny random Hugging Face decoders for the language-model tests."""

from __future__ import annotations

import os

import torch

# transformers would import TensorFlow (installed for TFDS) for its TF models: 7 s unused.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
import transformers  # noqa: E402


def random_causal_lm(config: transformers.PretrainedConfig) -> transformers.PreTrainedModel:
  """A causal LM with every parameter random: weights and biases around 0, norm scales
  around 1 (transformers' own init leaves biases at 0 and norms at 1, which hides layout
  mistakes)."""
  torch.manual_seed(0)
  model = transformers.AutoModelForCausalLM.from_config(config, attn_implementation="eager")
  with torch.no_grad():
    for name, param in model.named_parameters():
      param.normal_(0.0, 0.2)
      if param.dim() == 1 and ("norm" in name or "ln_" in name):
        param.add_(1.0)
  return model.eval()
