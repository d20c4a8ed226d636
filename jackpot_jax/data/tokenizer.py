"""A Hugging Face tokenizer folder read through the `tokenizers` library, and its
end-of-text token.

The folder is what transformers' `save_pretrained` writes for a fast tokenizer:
tokenizer.json (the whole tokenizer: normaliser, pre-tokeniser, model, post-processor,
added tokens), usually with tokenizer_config.json and special_tokens_map.json. Only
`tokenizers` reads it, so text data needs no transformers at run time. Documents are
encoded as the tokenizer encodes by default (the special tokens its post-processor adds,
such as Llama's begin-of-text, included), never truncated or padded, whatever
tokenizer.json says.

The end-of-text token separates documents in a token stream. It is the first of:
tokenizer_config.json's eos_token, special_tokens_map.json's eos_token, the model's
config.json eos_token_id (the first, where it lists several).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from pathlib import Path
from typing import Any, Iterable, Sequence

import numpy as np
import tokenizers

from jackpot_jax import errors

TOKENIZER_FILE = "tokenizer.json"
# Where the end-of-text token is looked up, in order: (file, key).
EOS_SOURCES = (("tokenizer_config.json", "eos_token"), ("special_tokens_map.json", "eos_token"),
               ("config.json", "eos_token_id"))


@dataclasses.dataclass(frozen=True)
class TextTokenizer:
  """A loaded tokenizer with its end-of-text token.

  Attributes:
    folder: where it was read from.
    tokenizer: the `tokenizers.Tokenizer` (truncation and padding off).
    eos_token, eos_id: the end-of-text token and its id.
    vocab_end: the largest token id plus one: a model's vocabulary must be at least this.
    fingerprint: SHA-256 of tokenizer.json and the end-of-text id; equal fingerprints
      encode every text alike.
  """

  folder: str
  tokenizer: tokenizers.Tokenizer = dataclasses.field(compare=False)
  eos_token: str
  eos_id: int
  vocab_end: int
  fingerprint: str

  def encode(self, texts: Sequence[str]) -> list[np.ndarray]:
    """Each text's token ids (int32), as the tokenizer encodes by default; in parallel,
    and without the character offsets, which nothing here reads."""
    return [np.asarray(encoding.ids, np.int32)
            for encoding in self.tokenizer.encode_batch_fast(list(texts))]


def load_tokenizer(folder: str | Path) -> TextTokenizer:
  """Reads `folder`'s tokenizer.json and end-of-text token.

  Raises:
    ValueError (one line): no folder, no tokenizer.json, a file that is not a tokenizer,
      or no end-of-text token the vocabulary knows.
  """
  folder = Path(folder)
  path = folder / TOKENIZER_FILE
  if not path.is_file():
    what = "is not a folder" if not folder.is_dir() else f"has no {TOKENIZER_FILE}"
    raise ValueError(f"tokenizer folder {folder} {what}; set data.tokenizer to a Hugging Face "
                     f"tokenizer folder (transformers' AutoTokenizer.save_pretrained writes "
                     f"{TOKENIZER_FILE} for a fast tokenizer)")
  content = path.read_bytes()
  try:
    tokenizer = tokenizers.Tokenizer.from_str(content.decode("utf-8"))
  except Exception as error:  # the Rust parser's errors are plain Exceptions
    raise ValueError(f"{path} is not a tokenizers tokenizer ({errors.one_line(error, 200)})"
                     ) from error
  tokenizer.no_truncation()
  tokenizer.no_padding()
  eos_token, eos_id = end_of_text(folder, tokenizer)
  vocab_end = max(tokenizer.get_vocab(with_added_tokens=True).values()) + 1
  fingerprint = hashlib.sha256(content + f"\0eos={eos_id}".encode()).hexdigest()
  return TextTokenizer(str(folder), tokenizer, eos_token, eos_id, vocab_end, fingerprint)


def _read_json(path: Path) -> dict[str, Any]:
  try:
    content = json.loads(path.read_text(encoding="utf-8"))
  except (ValueError, UnicodeDecodeError) as error:
    raise ValueError(f"{path} is not valid JSON ({errors.one_line(error)})") from error
  return content if isinstance(content, dict) else {}


def _token_text(value: Any) -> str | None:
  """An eos_token entry: a string, or an AddedToken object with its `content`."""
  if isinstance(value, dict):
    value = value.get("content")
  return value if isinstance(value, str) and value else None


def end_of_text(folder: Path, tokenizer: tokenizers.Tokenizer) -> tuple[str, int]:
  """(token, id) of the folder's end-of-text token (see the module docstring).

  Raises:
    ValueError (one line): none of the files names one, or its token is not in the
      vocabulary.
  """
  for file_name, key in EOS_SOURCES:
    path = folder / file_name
    value = _read_json(path).get(key) if path.is_file() else None
    if value is None:
      continue
    if key == "eos_token_id":
      eos_id = value[0] if isinstance(value, list) and value else value
      token = tokenizer.id_to_token(eos_id) if isinstance(eos_id, int) else None
    else:
      token = _token_text(value)
      eos_id = None if token is None else tokenizer.token_to_id(token)
    if token is None or eos_id is None:
      raise ValueError(f"{path}'s {key} {value!r} is not a token of {folder / TOKENIZER_FILE}; "
                       "name the end-of-text token the tokenizer has")
    return token, int(eos_id)
  sources = ", ".join(f"{file_name}'s {key}" for file_name, key in EOS_SOURCES)
  raise ValueError(f"tokenizer folder {folder} names no end-of-text token (looked for "
                   f"{sources}); add \"eos_token\" to its tokenizer_config.json")


def join_documents(documents: Iterable[np.ndarray], eos_id: int) -> np.ndarray:
  """One int32 token stream: the documents' ids with `eos_id` between documents."""
  parts: list[np.ndarray] = []
  separator = np.asarray([eos_id], np.int32)
  for index, ids in enumerate(documents):
    if index:
      parts.append(separator)
    parts.append(np.asarray(ids, np.int32))
  return np.concatenate(parts) if parts else np.zeros(0, np.int32)


def check_vocabulary(tokenizer: TextTokenizer, vocab_size: int) -> None:
  """Raises ValueError (one line) unless every token id the tokenizer gives fits a model
  with `vocab_size` embeddings (a larger, padded vocabulary fits)."""
  if tokenizer.vocab_end > vocab_size:
    raise ValueError(f"the tokenizer of {tokenizer.folder} has token ids up to "
                     f"{tokenizer.vocab_end - 1}, beyond the model's vocab_size {vocab_size}; "
                     "use the tokenizer the model was trained with (data.tokenizer)")
