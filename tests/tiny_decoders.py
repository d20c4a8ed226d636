"""Tiny random Hugging Face decoders for the language-model tests."""

from __future__ import annotations

import math
import os

import torch

# transformers would import TensorFlow (installed for TFDS) for its TF models: 7 s unused.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
import transformers  # noqa: E402

from tiny_text import packed, write_text_folder, write_tokenizer  # noqa: E402


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


def save_tiny_llama(folder, vocab_size: int = 300, hidden_size: int = 32,
                    intermediate_size: int = 48):
  """A random Llama (grouped-query attention: 4 heads, 2 key/value heads; two blocks) whose
  projections' inputs fit 2:4, saved into `folder` (a tokenizer folder, so that the model
  folder carries both)."""
  config = transformers.LlamaConfig(vocab_size=vocab_size, hidden_size=hidden_size,
                                    intermediate_size=intermediate_size,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=64,
                                    eos_token_id=0)
  random_causal_lm(config).save_pretrained(folder)
  return folder


def write_llama_folders(root, train: list[str], test: list[str], **sizes):
  """(model folder with its tokenizer, text folder, token cache folder) under `root`: a
  `save_tiny_llama` (of `sizes`) whose tokenizer is trained on `train`, and the text."""
  model_folder = save_tiny_llama(write_tokenizer(root / "model", train), **sizes)
  text_folder = write_text_folder(root / "text", {"train": train, "test": test})
  return model_folder, text_folder, root / "cache"


def llm_overrides(folders, seq_len: int, **changes) -> dict:
  """The llm_tiny config's overrides that point it at `write_llama_folders`' folders, with
  small calibration and perplexity batches on one device, and `changes`."""
  model_folder, text_folder, cache = folders
  return {"model.checkpoint": str(model_folder), "data.name": f"text:{text_folder}",
          "data.token_cache_dir": str(cache), "data.seq_len": seq_len,
          "baselines.calibration_sequences": 4, "baselines.batch_size": 2,
          "eval.perplexity_batch_size": 4, "mesh.num_devices": 1, **changes}


def transformers_perplexity(model: transformers.PreTrainedModel, tokenizer_folder,
                            texts: list[str], seq_len: int) -> float:
  """Perplexity of a transformers causal LM over `texts` by the packed protocol (the
  tokenizer of `tokenizer_folder`, seq_len-token sequences), in float64."""
  tokens = torch.from_numpy(packed(tokenizer_folder, texts, seq_len)).long()
  with torch.no_grad():
    logits = model(tokens).logits[:, :-1].double()
  nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          tokens[:, 1:].reshape(-1))
  return math.exp(nll.item())
