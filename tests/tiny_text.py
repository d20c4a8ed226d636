"""Tiny text data for the language-model tests: random documents, a byte-level BPE
tokenizer trained on them in a few milliseconds, and text folders in the `text:` layout."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, trainers

EOT = "<|endoftext|>"
_WORDS = ("alpha", "beta", "gamma", "delta", "epsilon", "zeta", "eta", "theta", "iota",
          "kappa", "lambda", "mu", "the", "of", "and", ",", ".", "\n")


def documents(count: int, seed: int = 0, words: tuple[int, int] = (10, 60)) -> list[str]:
  """`count` documents of random words (between `words` of them each)."""
  rng = np.random.default_rng(seed)
  return [" ".join(rng.choice(_WORDS, size=rng.integers(*words))) for _ in range(count)]


def write_tokenizer(folder: Path, texts: list[str], vocab_size: int = 300,
                    eos_file: str = "tokenizer_config.json") -> Path:
  """A byte-level BPE tokenizer with <|endoftext|> (id 0) trained on `texts`, saved as a
  Hugging Face tokenizer folder; `eos_file` names its end-of-text token (None: no file
  does)."""
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(texts, trainer)
  folder.mkdir(parents=True, exist_ok=True)
  tokenizer.save(str(folder / "tokenizer.json"))
  if eos_file is not None:
    (folder / eos_file).write_text(json.dumps({"eos_token": EOT}))
  return folder


def write_text_folder(root: Path, splits: dict[str, list[str]]) -> Path:
  """root/<split>/<i>.txt, one document per file."""
  for split, texts in splits.items():
    (root / split).mkdir(parents=True)
    for index, text in enumerate(texts):
      (root / split / f"{index:04d}.txt").write_text(text, encoding="utf-8")
  return root


def packed(tokenizer_folder: Path, texts: list[str], seq_len: int) -> np.ndarray:
  """The packed protocol computed directly with `tokenizers`: each text encoded, joined
  with <|endoftext|> between texts, cut into [n, seq_len], the remainder dropped."""
  tokenizer = Tokenizer.from_file(str(tokenizer_folder / "tokenizer.json"))
  eot = tokenizer.token_to_id(EOT)
  stream: list[int] = []
  for index, text in enumerate(texts):
    stream += ([eot] if index else []) + tokenizer.encode(text).ids
  count = len(stream) // seq_len
  return np.asarray(stream[:count * seq_len], np.int32).reshape(count, seq_len)
