"""Token stores: a split's documents tokenized once and kept on disk as one token array,
read as packed sequences.

A store is `<cache dir>/<key>.npy`: a flat int32 array of the documents' token ids with
the end-of-text token between documents (`tokenizer.join_documents`). The key is a
SHA-256 of the store format, the tokenizer's fingerprint and every document file's
name and content, so the same files with the same tokenizer find their store again
wherever the files were copied, and other files or another tokenizer make another one.
A store is written through `fileio.atomic_path` (complete or absent; processes that
build the same store at once write the same bytes) and memory-mapped on reading, so a
record read touches its own tokens only.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import os
from pathlib import Path
from typing import Callable, Iterable, Iterator, Sequence

from absl import logging
import numpy as np

from jackpot_jax import fileio
from jackpot_jax.data.tokenizer import TextTokenizer, join_documents

AUTO = "auto"
# Bumped when the content of a store for the same files and tokenizer changes.
STORE_FORMAT = 1
# Characters of text encoded per call of the tokenizer: bounds the memory in flight.
_ENCODE_BYTES = 32 << 20
_HASH_CHUNK = 1 << 20


def cache_dir(value: str) -> Path:
  """The folder data.token_cache_dir names: `auto` is $XDG_CACHE_HOME (or
  ~/.cache)/jackpot_jax/tokens."""
  if value != AUTO:
    return Path(value)
  cache_home = os.environ.get("XDG_CACHE_HOME") or os.path.join(Path.home(), ".cache")
  return Path(cache_home) / "jackpot_jax" / "tokens"


def _file_digest(path: Path) -> str:
  digest = hashlib.sha256()
  with open(path, "rb") as file:
    while chunk := file.read(_HASH_CHUNK):
      digest.update(chunk)
  return digest.hexdigest()


def store_key(documents: Sequence[tuple[str, Path]], tokenizer: TextTokenizer) -> str:
  """The store's name for `documents` ((name, path) in order) and `tokenizer`."""
  key = hashlib.sha256(f"format={STORE_FORMAT}\0tokenizer={tokenizer.fingerprint}".encode())
  for name, path in documents:
    key.update(f"\0{name}\0{_file_digest(path)}".encode())
  return key.hexdigest()


def _read_text(path: Path) -> str:
  try:
    return path.read_bytes().decode("utf-8")
  except UnicodeDecodeError as error:
    raise ValueError(f"{path} is not UTF-8 text ({error.reason} at byte {error.start}); "
                     "save the document as UTF-8") from error


def _encoded(texts: Iterable[str], tokenizer: TextTokenizer) -> Iterator[np.ndarray]:
  """Each document's token ids, in order, encoded in batches of about _ENCODE_BYTES."""
  batch: list[str] = []
  size = 0
  for text in texts:
    batch.append(text)
    size += len(text)
    if size >= _ENCODE_BYTES:
      yield from tokenizer.encode(batch)
      batch, size = [], 0
  if batch:
    yield from tokenizer.encode(batch)


def token_store(documents: Sequence[tuple[str, Path]], tokenizer: TextTokenizer,
                directory: Path, texts: Callable[[], Iterable[str]] | None = None) -> Path:
  """The store of `documents` ((name, path) in order), tokenized now unless `directory`
  already holds it.

  `texts`, where given, yields the documents' texts in order, and the files of
  `documents` are the ones that hold them (a TFDS split's shards, named so that no text
  file's name is one of theirs); the store is keyed by those files as by text files."""
  path = directory / f"{store_key(documents, tokenizer)}.npy"
  if path.is_file():
    return path
  if texts is None:
    logging.info("tokenizing %d documents into %s", len(documents), path)
    read = (_read_text(file) for _, file in documents)
  else:
    logging.info("tokenizing the documents of %d files into %s", len(documents), path)
    read = texts()
  tokens = join_documents(_encoded(read, tokenizer), tokenizer.eos_id)
  with fileio.atomic_path(path) as temporary, open(temporary, "wb") as file:
    np.save(file, tokens)
  return path


@functools.lru_cache(maxsize=32)
def mapped_tokens(path: str) -> np.ndarray:
  """The token array of a .npy file, memory-mapped (read-only, opened once per process)."""
  return np.load(path, mmap_mode="r", allow_pickle=False)


@dataclasses.dataclass(frozen=True)
class PackedSequences:
  """A split's records: the non-overlapping `seq_len`-token sequences of a token array
  file, sequence i being tokens [i * seq_len, (i + 1) * seq_len); the remainder after the
  last whole sequence is dropped. It holds the file's path only, so it pickles to
  Grain's worker processes, which map the file themselves."""

  path: str
  seq_len: int
  token_count: int

  def __len__(self) -> int:
    return self.token_count // self.seq_len

  def __getitem__(self, index: int) -> np.ndarray:
    return self.read(np.asarray([index]))[0]

  def read(self, indices: np.ndarray) -> np.ndarray:
    """int32 [len(indices), seq_len]: the sequences at `indices`."""
    tokens = mapped_tokens(self.path)
    starts = np.asarray(indices, np.int64) * self.seq_len
    rows = [tokens[start:start + self.seq_len] for start in starts.tolist()]
    if not rows:
      return np.zeros((0, self.seq_len), np.int32)
    return np.stack(rows).astype(np.int32)
