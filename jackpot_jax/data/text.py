"""Text data for language models: `text:<dir>`, `tokens:<dir>` and `tfds_text:<name>`,
as packed sequences.

  text:<dir>    <dir>/train and <dir>/test (or validation, val), each a .txt file (one
                document) or a folder of .txt files (one document per file, in the order
                of their paths, subfolders included); UTF-8. Each split is tokenized once
                into a token store (`token_store`) that later opens read.
  tokens:<dir>  <dir>/train.npy and <dir>/test.npy (or validation.npy, val.npy): 1-D
                integer arrays of token ids, documents already joined by the tokenizer's
                end-of-text id; read as they are (memory-mapped).
  tfds_text:<name>  a TFDS dataset prepared in data.data_dir (array_record files, read
                without TensorFlow as the image datasets are): one example is one
                document, the string feature data.text_feature (default 'text'), in the
                order of the prepared files. Each split is tokenized once into a token
                store keyed by its shard files, as a text folder's split by its files.

A split's tokens are its documents' ids with the end-of-text token between documents,
cut into non-overlapping data.seq_len-token sequences, the remainder dropped. Those
sequences are the split's records, which the Grain pipeline reads as it reads images.
The search reads the training sequences less a held-out slice (data.holdout_sequences,
`holdout.partition`); `calibration_sequences` draws from the searched ones; the
evaluation split is never searched, held out or calibrated on.
"""

from __future__ import annotations

import dataclasses
import functools
from pathlib import Path
from typing import Any, Mapping

import numpy as np

from jackpot_jax.data import holdout, split_slices
from jackpot_jax.data.config import DataSpec, as_spec
from jackpot_jax.data.records import find_split
from jackpot_jax.data.token_store import PackedSequences, cache_dir, mapped_tokens, token_store
from jackpot_jax.data.tokenizer import TextTokenizer, check_vocabulary, load_tokenizer

TEXT_SUFFIX = ".txt"
TOKENS_SUFFIX = ".npy"
# Seeds the calibration draw, so that it does not follow any other random stream.
_CALIBRATION_STREAM = 7
# Names of the training split's sequences: the searched ones, the held-out ones, all.
_TRAINING_PARTS = ("search", "holdout", "train")


@dataclasses.dataclass(frozen=True)
class OpenedText:
  """Text data ready for the pipelines: its splits' files, the searched and held-out
  positions of the training split's sequences, and the tokenizer. A split is read (and
  tokenized, the first time) when it is first asked for; the training and evaluation
  splits are on opening."""

  spec: DataSpec
  description: str
  entries: dict[str, Any]
  train_split: str
  train_rows: np.ndarray
  searched: np.ndarray
  held_out: np.ndarray
  tokenizer: TextTokenizer

  def split_name(self, split: str) -> str:
    """The split `split` reads: 'search', 'holdout' and 'train' as they are, a split of
    the folder by its name ('test' falling back to 'validation' / 'val')."""
    if split in _TRAINING_PARTS:
      return split
    sliced = split_slices.parse(split, "data.eval_split")
    return find_split(sliced.name, self.entries, self.description) + sliced.suffix()

  def sequences(self, split: str) -> PackedSequences:
    """The packed sequences of a split of the folder (see `split_name`; a slice in the
    name is left to `rows`)."""
    name = find_split(split_slices.parse(split, "data.eval_split").name, self.entries,
                      self.description)
    return _sequences(self.spec, name, self.entries[name])

  def rows(self, split: str) -> tuple[PackedSequences, np.ndarray]:
    """(sequences, positions) of 'search', 'holdout' (the two partition the training
    split), 'train' (all of it) or any split of the folder."""
    if split in _TRAINING_PARTS:
      records = self.sequences(self.train_split)
      if split == "train":
        return records, self.train_rows
      return records, self.searched if split == "search" else self.held_out
    records = self.sequences(split)
    return records, split_slices.sliced_rows(split, "data.eval_split", len(records))


@dataclasses.dataclass(frozen=True)
class TextInfo:
  """What a language model run needs to know of its text data: sequences per split (the
  searched training ones, the held-out ones, the evaluation split's) and the separator."""

  name: str
  seq_len: int
  num_train: int
  num_holdout: int
  num_test: int
  eos_token: str
  vocab_end: int


def _documents(entry: Path) -> list[tuple[str, Path]]:
  """(name, path) of a text split's documents: the file itself, or a folder's .txt
  files in path order."""
  if entry.is_file():
    return [(entry.name, entry)]
  return [(path.relative_to(entry).as_posix(), path)
          for path in sorted(entry.rglob("*" + TEXT_SUFFIX)) if path.is_file()]


def _entries(spec: DataSpec) -> dict[str, Any]:
  """Split name -> its file or folder in the data folder (a `tfds_source.TextSplit` for
  a TFDS dataset)."""
  if spec.kind == "tfds_text":
    from jackpot_jax.data.tfds_source import open_tfds_text  # pylint: disable=import-outside-toplevel
    return open_tfds_text(spec)
  root = Path(spec.source)
  if not root.is_dir():
    raise ValueError(f"data.name={spec.name}: {root} is not a folder; {_layout(spec)}")
  suffix = TEXT_SUFFIX if spec.kind == "text" else TOKENS_SUFFIX
  entries: dict[str, Path] = {}
  for path in sorted(root.iterdir()):
    if path.is_file() and path.suffix == suffix:
      name = path.stem
    elif path.is_dir() and spec.kind == "text":
      name = path.name
    else:
      continue
    if name in entries:
      raise ValueError(f"data.name={spec.name}: both {entries[name]} and {path} would be "
                       f"split {name!r}; keep one")
    entries[name] = path
  return entries


def _layout(spec: DataSpec) -> str:
  if spec.kind == "tfds_text":
    return (f"a TFDS dataset prepared in data.data_dir whose string feature "
            f"{spec.text_feature!r} (data.text_feature) holds one document per example")
  if spec.kind == "text":
    return ("a text folder holds train/ and test/, folders of .txt files with one "
            "document each, or train.txt and test.txt")
  return "a tokens folder holds train.npy and test.npy, 1-D arrays of integer token ids"


def _text_split(entry: Path, spec: DataSpec, tokenizer: TextTokenizer) -> PackedSequences:
  documents = _documents(entry)
  if not documents:
    raise ValueError(f"data.name={spec.name}: {entry} holds no {TEXT_SUFFIX} file")
  path = token_store(documents, tokenizer, cache_dir(spec.token_cache_dir))
  return PackedSequences(str(path), spec.seq_len, len(mapped_tokens(str(path))))


def _tfds_text_split(entry: Any, spec: DataSpec, tokenizer: TextTokenizer) -> PackedSequences:
  """A TFDS split's documents, tokenized into a store keyed by its shard files."""
  path = token_store(entry.key_files(), tokenizer, cache_dir(spec.token_cache_dir),
                     texts=entry.documents)
  return PackedSequences(str(path), spec.seq_len, len(mapped_tokens(str(path))))


def _tokens_split(entry: Path, spec: DataSpec, tokenizer: TextTokenizer) -> PackedSequences:
  """A .npy of token ids, checked: 1-D integers within the tokenizer's vocabulary."""
  try:
    tokens = mapped_tokens(str(entry))
  except ValueError as error:
    raise ValueError(f"data.name={spec.name}: {entry} is not a .npy array ({error})") from error
  if tokens.ndim != 1 or not np.issubdtype(tokens.dtype, np.integer):
    raise ValueError(f"data.name={spec.name}: {entry} holds {tokens.dtype} {tokens.shape}; "
                     "token ids are a 1-D integer array")
  if len(tokens) and (tokens.min() < 0 or tokens.max() >= tokenizer.vocab_end):
    raise ValueError(f"data.name={spec.name}: {entry} has token ids in [{tokens.min()}, "
                     f"{tokens.max()}], outside the {tokenizer.vocab_end} ids of the tokenizer "
                     f"{tokenizer.folder}; give the tokenizer they were made with "
                     "(data.tokenizer)")
  return PackedSequences(str(entry), spec.seq_len, len(tokens))


@functools.lru_cache(maxsize=8)
def _tokenizer(folder: str) -> TextTokenizer:
  return load_tokenizer(folder)


@functools.lru_cache(maxsize=16)
def _sequences(spec: DataSpec, name: str, entry: Any) -> PackedSequences:
  """Split `name`'s packed sequences, at least one.

  Raises:
    ValueError (one line): the split has fewer tokens than one sequence.
  """
  read = {"text": _text_split, "tfds_text": _tfds_text_split}.get(spec.kind, _tokens_split)
  sequences = read(entry, spec, _tokenizer(spec.tokenizer))
  if not len(sequences):
    raise ValueError(f"data.name={spec.name}: the {name} split has {sequences.token_count} "
                     f"tokens, fewer than one sequence of data.seq_len={spec.seq_len}; add "
                     "text or lower data.seq_len")
  return sequences


@functools.lru_cache(maxsize=4)
def _open_cached(spec: DataSpec) -> OpenedText:
  tokenizer = _tokenizer(spec.tokenizer)
  entries = _entries(spec)
  description = f"data.name={spec.name} ({_layout(spec)})"
  train_split = find_split(split_slices.parse(spec.train_split, "data.train_split").name,
                           entries, description)
  eval_split = find_split(split_slices.parse(spec.eval_split, "data.eval_split").name,
                          entries, description)
  # A bad evaluation split or slice fails now.
  split_slices.sliced_rows(spec.eval_split, "data.eval_split",
                           len(_sequences(spec, eval_split, entries[eval_split])))
  train_rows = split_slices.sliced_rows(spec.train_split, "data.train_split",
                                        len(_sequences(spec, train_split, entries[train_split])))
  searched, held_out = holdout.partition(train_rows, holdout.holdout_count(
      spec.holdout_sequences, len(train_rows), "data.holdout_sequences", "sequences"))
  return OpenedText(spec, description, entries, train_split, train_rows, searched, held_out,
                    tokenizer)


def open_text(spec: DataSpec) -> OpenedText:
  """The opened text data of `spec`, shared by every pipeline of the process; each split
  tokenized on the first open with this tokenizer, its store read afterwards.

  Raises:
    ValueError (one line): no such folder, a missing train or evaluation split, a split
      shorter than one sequence, a bad tokenizer or token file.
  """
  return _open_cached(dataclasses.replace(spec, prefetch=0, workers=0))


def text_info(spec: DataSpec) -> TextInfo:
  """Sequence counts and separator of `spec`'s text data."""
  opened = open_text(spec)
  return TextInfo(name=spec.name, seq_len=spec.seq_len, num_train=len(opened.searched),
                  num_holdout=len(opened.held_out),
                  num_test=len(opened.rows(spec.eval_split)[1]),
                  eos_token=opened.tokenizer.eos_token, vocab_end=opened.tokenizer.vocab_end)


def calibration_sequences(data_config: DataSpec | Mapping[str, Any], count: int, *,
                          seed: int = 0) -> np.ndarray:
  """int32 [count, seq_len]: `count` searched training sequences drawn without
  replacement by `seed`, in the order of their position in the training text. Never a
  held-out or evaluation sequence; the same arguments give the same sequences.

  Raises:
    ValueError (one line): `count` is negative or more than the searched sequences.
  """
  spec = as_spec(data_config)
  records, searched = open_text(spec).rows("search")
  if not 0 <= count <= len(searched):
    raise ValueError(f"{count} calibration sequences asked for, but {spec.name} has "
                     f"{len(searched)} searched training sequences of {spec.seq_len} tokens; "
                     "ask for fewer (baselines.calibration_sequences) or lower data.seq_len")
  drawn = np.random.default_rng([_CALIBRATION_STREAM, seed]).choice(len(searched), count,
                                                                      replace=False)
  return records.read(np.sort(searched[drawn]))


def check_model_fit(data_config: DataSpec | Mapping[str, Any], vocab_size: int,
                    max_positions: int | None = None) -> None:
  """Raises ValueError (one line) unless the text's tokenizer fits a model of
  `vocab_size` embeddings and data.seq_len its `max_positions` (None: no limit)."""
  spec = as_spec(data_config)
  check_vocabulary(open_text(spec).tokenizer, vocab_size)
  if max_positions is not None and spec.seq_len > max_positions:
    raise ValueError(f"data.seq_len={spec.seq_len} exceeds the model's {max_positions} "
                     "positions; lower data.seq_len")
