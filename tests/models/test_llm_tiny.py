"""The shipped language model is what it claims: pretrained/llm_tiny is a Hugging Face
Llama folder that jackpot_jax and transformers both load, with the same logits, and a
tokenizer of the config's vocabulary; pretrained/llm_tiny_text holds its train and test
documents (scripts/train_llm_tiny.py writes both)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import torch

from jackpot_jax.pytorch.hf_decoders import import_hf_decoder

# transformers would import TensorFlow (installed for TFDS) for its TF models: unused here.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
import transformers  # noqa: E402

PRETRAINED = Path(__file__).resolve().parents[2] / "pretrained"
MODEL = PRETRAINED / "llm_tiny"
TEXT = PRETRAINED / "llm_tiny_text"
EOT = "<|endoftext|>"
TOLERANCE = 1e-4


def _test_tokens(tokenizer, length: int = 64) -> np.ndarray:
  """[2, length] token ids: the start of two test documents, each after <|endoftext|>."""
  documents = sorted((TEXT / "test").glob("*.txt"))[:2]
  rows = [[tokenizer.eos_token_id] + tokenizer.encode(path.read_text())[:length - 1]
          for path in documents]
  return np.asarray(rows, np.int32)


def test_the_folder_loads_in_jackpot_jax_and_transformers_with_the_same_logits():
  config = json.loads((MODEL / "config.json").read_text())
  tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL)
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(MODEL).eval()
  model, params, hf_config = import_hf_decoder(MODEL)
  tokens = _test_tokens(tokenizer)

  ours = np.asarray(model.apply({"params": params}, tokens))
  with torch.no_grad():
    theirs = hf_model(torch.from_numpy(tokens).long()).logits.numpy()

  assert hf_config == config and config["architectures"] == ["LlamaForCausalLM"]
  assert isinstance(hf_model, transformers.LlamaForCausalLM)
  assert hf_model.dtype == torch.float32
  np.testing.assert_allclose(ours, theirs, rtol=0, atol=TOLERANCE)
  predicted = ours[:, :-1].argmax(-1) == tokens[:, 1:]
  assert predicted.mean() > 0.2, "a trained model predicts many next tokens of its test text"


def test_the_tokenizer_fits_the_model_and_marks_documents_with_endoftext():
  config = json.loads((MODEL / "config.json").read_text())
  tokenizer = transformers.AutoTokenizer.from_pretrained(MODEL)
  text = "def main() -> None:\n    print('hello')\n"

  assert isinstance(tokenizer, transformers.PreTrainedTokenizerFast)
  assert len(tokenizer) == config["vocab_size"]
  assert tokenizer.eos_token == tokenizer.bos_token == EOT
  assert tokenizer.eos_token_id == config["eos_token_id"] == config["bos_token_id"]
  assert tokenizer.decode(tokenizer.encode(text)) == text


def test_the_text_folder_has_train_and_test_documents_and_says_where_they_come_from():
  documents = {split: {path.name: path.stat().st_size for path in (TEXT / split).glob("*.txt")}
               for split in ("train", "test")}

  assert documents["train"] and documents["test"]
  assert not documents["train"].keys() & documents["test"].keys()
  assert all(size > 0 for split in documents.values() for size in split.values())
  assert sum(documents["train"].values()) > 4 * sum(documents["test"].values())
  assert "PSF License" in (TEXT / "README").read_text()
