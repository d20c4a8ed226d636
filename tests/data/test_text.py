"""Text data for language models: the tokenizer, token stores tokenized once, packed
sequences, the Grain pipeline over them (resume, hosts, evaluation), held-out and
calibration sequences, and one-line errors."""

from __future__ import annotations

import contextlib
import json
import re
import shutil

import numpy as np
import pytest

from jackpot_jax import data as data_lib, errors
from jackpot_jax.data import text, tokenizer as tokenizer_lib
from jackpot_jax.data.config import resolve_spec

from tiny_text import EOT, documents, packed, write_text_folder, write_tokenizer

SEQ_LEN = 16
TRAIN, TEST = documents(30, seed=0), documents(6, seed=1)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
  """(text folder, tokenizer folder) of TRAIN and TEST."""
  root = tmp_path_factory.mktemp("corpus")
  return (write_text_folder(root / "text", {"train": TRAIN, "test": TEST}),
          write_tokenizer(root / "tokenizer", TRAIN))


def _config(corpus, tmp_path, **overrides) -> dict:
  folder, tokenizer = corpus
  config = dict(name=f"text:{folder}", tokenizer=str(tokenizer), seq_len=SEQ_LEN,
                token_cache_dir=str(tmp_path / "cache"), holdout_sequences=5)
  return {**config, **overrides}


def _all_sequences(config, split: str) -> np.ndarray:
  records, rows = text.open_text(resolve_spec(config)).rows(split)
  return records.read(rows)


def _one_line_exit_2(capsys, action) -> str:
  """Runs `action` as a command would: its error must be one line with exit status 2."""
  with pytest.raises(SystemExit) as exit_:
    with errors.exit_on_user_error("jackpot"):
      action()
  lines = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and len(lines) == 1, lines
  return lines[0]


def test_documents_are_joined_by_the_end_of_text_token_and_packed_with_the_remainder_dropped(
    corpus, tmp_path):
  config = _config(corpus, tmp_path)
  expected = packed(corpus[1], TRAIN, SEQ_LEN)
  np.testing.assert_array_equal(_all_sequences(config, "train"), expected)
  np.testing.assert_array_equal(_all_sequences(config, "test"), packed(corpus[1], TEST, SEQ_LEN))
  store = np.load(text.open_text(resolve_spec(config)).sequences("train").path)
  eot = tokenizer_lib.load_tokenizer(corpus[1]).eos_id
  assert store.dtype == np.int32 and len(store) // SEQ_LEN * SEQ_LEN == expected.size
  assert np.count_nonzero(store == eot) == len(TRAIN) - 1  # between documents only
  assert store[0] != eot and store[-1] != eot


def test_a_split_is_tokenized_once_and_its_store_read_on_later_opens(corpus, tmp_path,
                                                                     monkeypatch):
  first = _all_sequences(_config(corpus, tmp_path), "train")

  def no_tokenizing(*_):
    raise AssertionError("tokenized again")

  monkeypatch.setattr(tokenizer_lib.TextTokenizer, "encode", no_tokenizing)
  copied = shutil.copytree(corpus[0], tmp_path / "copy")  # the same files elsewhere
  again = _config((copied, corpus[1]), tmp_path, seq_len=2 * SEQ_LEN)
  np.testing.assert_array_equal(_all_sequences(again, "train").reshape(-1),
                                first.reshape(-1)[:len(first) // 2 * 2 * SEQ_LEN])
  assert len(list((tmp_path / "cache").iterdir())) == 2  # train and test, once each
  (copied / "train" / "0000.txt").write_text("other words")
  with pytest.raises(AssertionError, match="tokenized again"):
    text.open_text(resolve_spec(dict(again, seq_len=SEQ_LEN)))


def test_a_split_may_be_one_text_file_and_the_test_split_validation(corpus, tmp_path):
  (tmp_path / "text").mkdir()
  (tmp_path / "text" / "train.txt").write_text("\n\n".join(TRAIN))
  (tmp_path / "text" / "validation.txt").write_text(TEST[0])
  (tmp_path / "text" / "README").write_text("not a split")
  config = _config((tmp_path / "text", corpus[1]), tmp_path, holdout_sequences=0)
  np.testing.assert_array_equal(_all_sequences(config, "train"),
                                packed(corpus[1], ["\n\n".join(TRAIN)], SEQ_LEN))
  np.testing.assert_array_equal(_all_sequences(config, "test"),
                                packed(corpus[1], [TEST[0]], SEQ_LEN))


def test_a_tokens_folder_is_read_as_stored(corpus, tmp_path):
  stream = np.random.default_rng(0).integers(0, 200, size=1000).astype(np.uint16)
  (tmp_path / "tokens").mkdir()
  np.save(tmp_path / "tokens" / "train.npy", stream)
  np.save(tmp_path / "tokens" / "test.npy", stream[:100])
  config = dict(_config(corpus, tmp_path), name=f"tokens:{tmp_path / 'tokens'}")
  sequences = _all_sequences(config, "train")
  assert sequences.shape == (62, SEQ_LEN) and sequences.dtype == np.int32  # 8 tokens dropped
  np.testing.assert_array_equal(sequences, stream[:62 * SEQ_LEN].reshape(-1, SEQ_LEN))
  assert not (tmp_path / "cache").exists()


def test_a_resumed_run_reads_the_batches_of_its_steps_across_epochs(corpus, tmp_path):
  config = _config(corpus, tmp_path)
  steps_per_epoch = data_lib.load_dataset_info(config).num_train // 4
  with contextlib.closing(data_lib.make_train_iterator(config, batch_size=4, seed=3)) as batches:
    from_start = [next(batches)["tokens"] for _ in range(steps_per_epoch + 3)]
  start = steps_per_epoch - 1
  with contextlib.closing(data_lib.make_train_iterator(config, batch_size=4, seed=3,
                                                       start_step=start)) as batches:
    resumed = [next(batches)["tokens"] for _ in range(4)]
  for offset, batch in enumerate(resumed):
    np.testing.assert_array_equal(batch, from_start[start + offset])
  assert batch.shape == (4, SEQ_LEN) and batch.dtype == np.int32


def test_hosts_partition_the_global_batch(corpus, tmp_path):
  config = _config(corpus, tmp_path)
  with contextlib.closing(data_lib.make_train_iterator(config, batch_size=4, seed=0,
                                                       start_step=5)) as batches:
    whole = next(batches)["tokens"]
  parts = []
  for host in range(2):
    with contextlib.closing(data_lib.make_train_iterator(
        config, batch_size=4, seed=0, start_step=5, process_index=host,
        process_count=2)) as batches:
      parts.append(next(batches)["tokens"])
  np.testing.assert_array_equal(np.concatenate(parts), whole)


def test_an_epoch_reads_every_searched_sequence_once_and_no_held_out_one(corpus, tmp_path):
  config = _config(corpus, tmp_path)
  opened = text.open_text(resolve_spec(config))
  info = data_lib.load_dataset_info(config)
  assert (info.num_train, info.num_holdout) == (len(opened.searched), 5)
  assert info.num_train + 5 == len(packed(corpus[1], TRAIN, SEQ_LEN))
  with contextlib.closing(data_lib.make_train_iterator(config, batch_size=2, seed=1)) as batches:
    read = {bytes(row) for _ in range(info.num_train // 2) for row in next(batches)["tokens"]}
  assert len(read) == info.num_train // 2 * 2  # no sequence twice
  assert read <= {bytes(row) for row in _all_sequences(config, "search")}
  assert not read & {bytes(row) for row in _all_sequences(config, "holdout")}


def test_eval_batches_cover_a_split_once_with_the_padding_masked(corpus, tmp_path):
  config = _config(corpus, tmp_path)
  expected = packed(corpus[1], TEST, SEQ_LEN)
  batches = list(data_lib.make_eval_batches(config, batch_size=4, process_index=1,
                                            process_count=2))
  whole = list(data_lib.make_eval_batches(config, batch_size=4))
  tokens = np.concatenate([b["tokens"] for b in whole])
  mask = np.concatenate([b["mask"] for b in whole])
  np.testing.assert_array_equal(tokens[mask], expected)
  assert not tokens[~mask].any() and len(tokens) == -(-len(expected) // 4) * 4
  np.testing.assert_array_equal(np.concatenate([b["tokens"] for b in batches]),
                                np.concatenate([b["tokens"][2:] for b in whole]))


def test_calibration_sequences_are_searched_training_ones_chosen_by_the_seed(corpus, tmp_path):
  config = _config(corpus, tmp_path)
  calibration = text.calibration_sequences(config, 6, seed=0)
  assert calibration.shape == (6, SEQ_LEN) and calibration.dtype == np.int32
  np.testing.assert_array_equal(calibration, text.calibration_sequences(config, 6, seed=0))
  assert not np.array_equal(calibration, text.calibration_sequences(config, 6, seed=1))
  rows = {bytes(row) for row in calibration}
  assert rows <= {bytes(row) for row in _all_sequences(config, "search")}
  assert not rows & {bytes(row) for row in _all_sequences(config, "holdout")}
  assert not rows & {bytes(row) for row in _all_sequences(config, "test")}
  assert text.calibration_sequences(config, 0).shape == (0, SEQ_LEN)


def test_the_end_of_text_token_is_found_where_hugging_face_folders_name_it(corpus, tmp_path):
  for eos_file in ("tokenizer_config.json", "special_tokens_map.json"):
    folder = write_tokenizer(tmp_path / eos_file, TRAIN, eos_file=eos_file)
    loaded = tokenizer_lib.load_tokenizer(folder)
    assert (loaded.eos_token, loaded.eos_id) == (EOT, 0)
  folder = write_tokenizer(tmp_path / "config", TRAIN, eos_file=None)
  (folder / "config.json").write_text(json.dumps({"eos_token_id": [0, 5]}))
  assert tokenizer_lib.load_tokenizer(folder).eos_token == EOT


def test_the_model_folder_is_the_default_tokenizer(corpus):
  spec = resolve_spec(dict(name=f"text:{corpus[0]}"), model_checkpoint=str(corpus[1]))
  assert spec.tokenizer == str(corpus[1])
  assert resolve_spec(dict(name="cifar10"), model_checkpoint=str(corpus[1])).tokenizer is None


@pytest.mark.parametrize("case,message", [
    ("short", r"the test split has \d+ tokens, fewer than one sequence of data.seq_len=4096"),
    ("no_test", r"has no split 'test' \(it has train\)"),
    ("no_train", r"has no split 'train' \(it has test\)"),
    ("vocabulary", r"token ids up to \d+, beyond the model's vocab_size 100"),
    ("no_tokenizer_json", r"has no tokenizer.json"),
    ("no_eos", r"names no end-of-text token"),
    ("no_tokenizer", r"needs a tokenizer: set data.tokenizer"),
    ("seq_len", r"data.seq_len must be at least 2"),
    ("token_ids", r"has token ids in \[0, 999\], outside the \d+ ids of the tokenizer"),
])
def test_bad_text_input_is_one_line_with_exit_status_2(corpus, tmp_path, capsys, case, message):
  config = _config(corpus, tmp_path)
  folder = tmp_path / "text"
  if case == "short":
    write_text_folder(folder, {"train": TRAIN * 20, "test": TEST})
    config.update(name=f"text:{folder}", seq_len=4096, holdout_sequences=0)
  elif case in ("no_test", "no_train"):
    write_text_folder(folder, {"test" if case == "no_train" else "train": TRAIN})
    config.update(name=f"text:{folder}")
  elif case == "no_tokenizer_json":
    config.update(tokenizer=str(tmp_path))
  elif case == "no_eos":
    config.update(tokenizer=str(write_tokenizer(tmp_path / "tok", TRAIN, eos_file=None)))
  elif case == "no_tokenizer":
    config.pop("tokenizer")
  elif case == "seq_len":
    config.update(seq_len=1)
  elif case == "token_ids":
    folder.mkdir()
    for split in ("train", "test"):
      np.save(folder / f"{split}.npy", np.arange(1000))
    config.update(name=f"tokens:{folder}")

  def action():
    if case == "vocabulary":
      text.check_model_fit(config, vocab_size=100)
    else:
      data_lib.load_dataset_info(config)

  assert re.search(message, _one_line_exit_2(capsys, action))
