"""`tfds_text:<name>`: a prepared TFDS dataset's string feature as language-model text,
one example one document, through the same token stores and packing as `text:<dir>`.
No test touches the network, and reading the dataset does not import TensorFlow."""

from __future__ import annotations

import contextlib
import re
import subprocess
import sys

import numpy as np
import pytest
import tensorflow_datasets as tfds

from data_helpers import no_network  # noqa: F401 (autouse: no test touches the network)
from jackpot_jax import data as data_lib, errors
from jackpot_jax.data import text
from jackpot_jax.data.config import resolve_spec

from tiny_text import documents, packed, write_text_folder, write_tokenizer

SEQ_LEN = 16
TRAIN, TEST = documents(30, seed=0), documents(6, seed=1)


class TinyDocs(tfds.core.GeneratorBasedBuilder):
  """TRAIN and TEST as a TFDS dataset: a 'text' document, a 'body' copy of it as a
  string Tensor, an integer 'length'; examples kept in the order generated."""

  VERSION = tfds.core.Version("1.0.0")

  def _info(self):
    return tfds.core.DatasetInfo(builder=self, disable_shuffling=True,
                                 features=tfds.features.FeaturesDict({
                                     "text": tfds.features.Text(),
                                     "body": tfds.features.Tensor(shape=(), dtype=np.str_),
                                     "length": tfds.features.Scalar(np.int32)}))

  def _split_generators(self, dl_manager):
    del dl_manager
    return {"train": self._generate_examples(TRAIN), "test": self._generate_examples(TEST)}

  def _generate_examples(self, texts):
    for index, document in enumerate(texts):
      yield index, {"text": document, "body": document, "length": len(document)}


@pytest.fixture(scope="module")
def prepared(tmp_path_factory):
  """(TFDS data dir, tokenizer folder, text folder of the same documents)."""
  root = tmp_path_factory.mktemp("tfds_text")
  TinyDocs(data_dir=root / "tfds", file_format="array_record").download_and_prepare(
      download_config=tfds.download.DownloadConfig(try_download_gcs=False))
  return (str(root / "tfds"), write_tokenizer(root / "tokenizer", TRAIN),
          write_text_folder(root / "text", {"train": TRAIN, "test": TEST}))


def _config(prepared, tmp_path, **overrides) -> dict:
  data_dir, tokenizer, _ = prepared
  return {"name": "tfds_text:tiny_docs", "data_dir": data_dir, "tokenizer": str(tokenizer),
          "seq_len": SEQ_LEN, "token_cache_dir": str(tmp_path / "cache"),
          "holdout_sequences": 5, **overrides}


def _all_sequences(config, split: str) -> np.ndarray:
  records, rows = text.open_text(resolve_spec(config)).rows(split)
  return records.read(rows)


def test_sequences_equal_those_of_the_same_documents_as_a_text_folder(prepared, tmp_path):
  config = _config(prepared, tmp_path)
  folder = dict(config, name=f"text:{prepared[2]}", data_dir=None)
  for split in ("train", "search", "holdout", "test"):
    np.testing.assert_array_equal(_all_sequences(config, split), _all_sequences(folder, split))
  np.testing.assert_array_equal(_all_sequences(config, "train"),
                                packed(prepared[1], TRAIN, SEQ_LEN))
  assert _all_sequences(dict(config, text_feature="body"), "test").tolist() == (
      _all_sequences(config, "test").tolist())
  # Each source has its own stores of train and test (the text folder, the TFDS dataset
  # by 'text' and by 'body'): a store is keyed by the files it was read from.
  assert len(list((tmp_path / "cache").iterdir())) == 2 + 2 + 2


def test_batches_through_the_grain_pipeline(prepared, tmp_path):
  config = _config(prepared, tmp_path)
  info = data_lib.load_dataset_info(config)
  assert (info.num_train + info.num_holdout, info.num_holdout) == (
      len(packed(prepared[1], TRAIN, SEQ_LEN)), 5)
  with contextlib.closing(data_lib.make_train_iterator(config, batch_size=4, seed=0)) as batches:
    batch = next(batches)["tokens"]
  assert batch.shape == (4, SEQ_LEN) and batch.dtype == np.int32
  assert {bytes(row) for row in batch} <= {bytes(row) for row in _all_sequences(config, "search")}
  whole = list(data_lib.make_eval_batches(config, batch_size=4))
  tokens = np.concatenate([b["tokens"] for b in whole])
  mask = np.concatenate([b["mask"] for b in whole])
  np.testing.assert_array_equal(tokens[mask], packed(prepared[1], TEST, SEQ_LEN))


def test_reading_the_documents_does_not_import_tensorflow(prepared, tmp_path):
  script = ("import sys\n"
            "from jackpot_jax.data import text\n"
            "from jackpot_jax.data.config import resolve_spec\n"
            f"config = {_config(prepared, tmp_path)!r}\n"
            "opened = text.open_text(resolve_spec(config))\n"
            "assert len(opened.searched) > 0\n"
            "print('tensorflow' in sys.modules)\n")
  result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          check=True)
  assert result.stdout.strip().splitlines()[-1] == "False"


@pytest.mark.parametrize("case,message", [
    ("not_prepared", r"TFDS dataset imdb_reviews/plain_text is not prepared in \S+; run "
                     r"`python -m jackpot_jax.data.prepare --dataset=imdb_reviews/plain_text"),
    ("no_feature", r"TFDS dataset tiny_docs has no feature 'document' \(it has body, length, "
                   r"text\); set data.text_feature"),
    ("not_string", r"TFDS dataset tiny_docs's feature 'length' is a Scalar, not a string"),
    ("no_split", r"data.name=tfds_text:tiny_docs \(.*\) has no split 'validation_v2' \(it has "
                 r"test, train\)"),
])
def test_bad_input_is_one_line_with_exit_status_2(prepared, tmp_path, capsys, case, message):
  config = _config(prepared, tmp_path)
  if case == "not_prepared":
    config.update(name="tfds_text:imdb_reviews/plain_text", data_dir=str(tmp_path))
  elif case == "no_feature":
    config.update(text_feature="document")
  elif case == "not_string":
    config.update(text_feature="length")
  else:
    config.update(eval_split="validation_v2")
  with pytest.raises(SystemExit) as exit_:
    with errors.exit_on_user_error("jackpot"):
      data_lib.load_dataset_info(config)
  lines = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and len(lines) == 1, lines
  assert re.search(message, lines[0]), lines[0]
