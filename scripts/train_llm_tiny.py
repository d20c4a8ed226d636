"""Trains the shipped pre-trained language model: a 1M-parameter Llama on Python's docs.

The language-model features (jackpot searches over decoders, perplexity) are measured on
a dense pre-trained decoder small enough to ship in the repository and to search on a
CPU. This script makes it offline, from scratch and deterministically (fixed seeds: a
rerun on the same machine with the same library versions writes the same files) from the
reStructuredText sources of Debian's python3.11-doc, one file per document:

  1. splits the documents into train and test by a hash of their relative path (~5% test),
     takes each split's documents in hash order while they fit in ~2 MB (train) and
     ~250 KB (test) of text, and writes them to --text_out/{train,test}/*.txt;
  2. trains a byte-level BPE tokenizer (vocabulary 2048; <|endoftext|> is BOS, EOS and the
     document separator) on the train split only;
  3. trains jackpot_jax's Flax Llama (`ARCHITECTURE`) on random 128-token windows of the
     train documents joined by <|endoftext|>, with AdamW, a linear warm-up and a cosine
     decay to a tenth of the peak learning rate;
  4. writes --out as a Hugging Face LlamaForCausalLM folder (float32 model.safetensors,
     config.json, tokenizer files): a random transformers model saved by save_pretrained
     gets the trained weights through `export_hf_decoder`, the folder is checked
     (`import_hf_decoder` and transformers give the trained model's logits within 1e-4)
     and only then replaces the previous one.

Test perplexity follows the packed protocol: the test documents tokenized, joined by
<|endoftext|>, cut into non-overlapping 128-token sequences (the remainder dropped), and
exp of the mean next-token NLL over every predicted token.

  apt-get install -y python3.11-doc
  python scripts/train_llm_tiny.py
"""

from __future__ import annotations

import contextlib
import hashlib
import math
import os
import shutil
import tempfile
import time
from pathlib import Path
from typing import Any, Iterator, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import torch
from absl import flags
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from jackpot_jax import entrypoint, fileio
from jackpot_jax.models import llama
from jackpot_jax.run import report
from jackpot_jax.pytorch.hf_decoders import export_hf_decoder, import_hf_decoder

# transformers would import TensorFlow (installed for TFDS) for its TF models: unused here.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
import transformers  # noqa: E402

DEBIAN_CORPUS_DIR = "/usr/share/doc/python3.11/html/_sources"
CORPUS_SUFFIX = ".rst.txt"
EOT = "<|endoftext|>"
# transformers' LlamaConfig fields besides the vocabulary and the special tokens. The word
# embeddings are tied: an untied lm_head would add 262,144 parameters (a quarter of the
# model, 1 MB of float32) that learn only from the output side, where the tied matrix
# learns from both ends of the network on a small corpus; Llama 3.2 1B/3B tie theirs too.
ARCHITECTURE = dict(hidden_size=128, intermediate_size=384, num_hidden_layers=4,
                    num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256,
                    rope_theta=10000.0, rms_norm_eps=1e-5, hidden_act="silu",
                    tie_word_embeddings=True)
LOGITS_TOLERANCE = 1e-4
# Test sequences whose logits the saved folder must reproduce.
CHECKED_SEQUENCES = 4
EVAL_BATCH = 64

FLAGS = flags.FLAGS
flags.DEFINE_string("corpus_dir", DEBIAN_CORPUS_DIR,
                    "folder of *.rst.txt documents (Debian's python3.11-doc installs them here)")
flags.DEFINE_string("text_out", "pretrained/llm_tiny_text", "the train/test text folder to write")
flags.DEFINE_string("out", "pretrained/llm_tiny", "the Hugging Face model folder to write")
flags.DEFINE_integer("test_percent", 5, "share of the documents (by path hash) held out",
                     lower_bound=1, upper_bound=99)
flags.DEFINE_integer("train_bytes", 2_000_000, "most UTF-8 bytes of train text kept", lower_bound=1)
flags.DEFINE_integer("test_bytes", 250_000, "most UTF-8 bytes of test text kept", lower_bound=1)
flags.DEFINE_integer("vocab_size", 2048, "BPE vocabulary, the 256 bytes and <|endoftext|> included",
                     lower_bound=257)
flags.DEFINE_integer("seq_len", 128, "tokens per packed training and test sequence",
                     lower_bound=2, upper_bound=ARCHITECTURE["max_position_embeddings"])
flags.DEFINE_integer("batch_size", 16, "sequences per step", lower_bound=1)
flags.DEFINE_integer("steps", 2000, "training steps", lower_bound=1)
flags.DEFINE_float("lr", 5e-3, "peak AdamW learning rate", lower_bound=0.0)
flags.DEFINE_integer("warmup_steps", 100, "steps of linear warm-up from 0 (fewer than --steps)",
                     lower_bound=0)
flags.DEFINE_float("weight_decay", 0.1, "AdamW weight decay of the matrices (not the norms)",
                   lower_bound=0.0)
flags.DEFINE_integer("seed", 0, "seeds the initialisation and the training windows")
flags.DEFINE_integer("log_every", 100, "steps between progress lines", lower_bound=1)
flags.DEFINE_integer("eval_every", 500, "steps between test perplexity lines (0: at the end)",
                     lower_bound=0)


class Document(NamedTuple):
  """One corpus file: `name` is its flat file stem (library/os.rst.txt: library__os)."""

  name: str
  text: str


def read_corpus(corpus_dir: Path) -> dict[str, str]:
  """Relative path -> text of every *.rst.txt under `corpus_dir`, in path order."""
  install = "install Debian's python3.11-doc (apt-get install -y python3.11-doc)"
  if not corpus_dir.is_dir():
    raise ValueError(f"--corpus_dir={corpus_dir} is not a folder; {install} or give a folder "
                     f"of *{CORPUS_SUFFIX} documents")
  paths = sorted(corpus_dir.rglob("*" + CORPUS_SUFFIX))
  if not paths:
    raise ValueError(f"--corpus_dir={corpus_dir} has no *{CORPUS_SUFFIX} documents; {install}")
  return {path.relative_to(corpus_dir).as_posix(): path.read_text(encoding="utf-8")
          for path in paths}


def flat_name(relative: str) -> str:
  return relative[:-len(CORPUS_SUFFIX)].replace("/", "__")


def path_hash(relative: str) -> int:
  """A stable pseudo-random number of a document's relative path (SHA-256)."""
  return int.from_bytes(hashlib.sha256(relative.encode()).digest()[:8], "big")


def within_budget(relatives: list[str], texts: dict[str, str], budget: int) -> list[str]:
  """The documents taken in hash order while they fit in `budget` UTF-8 bytes (one that
  does not fit is skipped), in path order: a deterministic sample spread over the corpus."""
  taken, used = [], 0
  for relative in sorted(relatives, key=path_hash):
    size = len(texts[relative].encode())
    if used + size <= budget:
      taken.append(relative)
      used += size
  return sorted(taken)


def split_corpus(texts: dict[str, str], test_percent: int, train_bytes: int,
                 test_bytes: int) -> dict[str, list[Document]]:
  """{"train", "test"}: the documents whose path hash falls in the first `test_percent`
  of 100 are test documents; each split is then capped at its byte budget."""
  test = [relative for relative in texts if path_hash(relative) % 100 < test_percent]
  train = [relative for relative in texts if path_hash(relative) % 100 >= test_percent]
  return {split: [Document(flat_name(r), texts[r]) for r in within_budget(chosen, texts, budget)]
          for split, chosen, budget in (("train", train, train_bytes), ("test", test, test_bytes))}


def text_bytes(documents: list[Document]) -> int:
  return sum(len(document.text.encode()) for document in documents)


@contextlib.contextmanager
def replacing_folder(destination: Path) -> Iterator[Path]:
  """Yields an empty folder beside `destination` that replaces it when the block succeeds
  (the old folder renamed aside, the new one renamed in, the old one removed); a failed
  block leaves the old folder as it was."""
  destination.parent.mkdir(parents=True, exist_ok=True)
  staging = Path(tempfile.mkdtemp(prefix=f".{destination.name}.", suffix=".tmp",
                                  dir=destination.parent))
  try:
    os.chmod(staging, fileio.NEW_DIRECTORY_MODE)
    yield staging
    old = staging.with_suffix(".old")
    if destination.exists():
      os.replace(destination, old)
    os.replace(staging, destination)
    shutil.rmtree(old, ignore_errors=True)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise


def text_readme(splits: dict[str, list[Document]], corpus_dir: str, test_percent: int) -> str:
  counts = "\n".join(f"  {split}/: {len(documents)} documents, {text_bytes(documents):,} bytes"
                     for split, documents in splits.items())
  return (
      "The text pretrained/llm_tiny was trained (train/) and measured (test/) on.\n\n"
      "Source: the reStructuredText sources of Python 3.11's documentation, as Debian's\n"
      f"python3.11-doc installs them in {corpus_dir},\n"
      "one file per document, its relative path flattened (library/os.rst.txt is\n"
      f"library__os.txt):\n{counts}\n\n"
      "Written by scripts/train_llm_tiny.py: the documents whose SHA-256 path hash falls in\n"
      f"the first {test_percent} of 100 are test documents; each split keeps documents in\n"
      "hash order while they fit in its byte budget.\n\n"
      "License: Python's documentation is Copyright (c) 2001-2023 Python Software\n"
      "Foundation, distributed under the PSF License Agreement\n"
      "(https://docs.python.org/3/license.html).\n")


def write_text_dataset(splits: dict[str, list[Document]], folder: Path, readme: str) -> None:
  """folder/{train,test}/<name>.txt, one document per file, and folder/README."""
  with replacing_folder(folder) as staging:
    for split, documents in splits.items():
      (staging / split).mkdir()
      for document in documents:
        (staging / split / f"{document.name}.txt").write_text(document.text, encoding="utf-8")
    (staging / "README").write_text(readme)


def train_tokenizer(texts: list[str], vocab_size: int) -> Tokenizer:
  """A byte-level BPE (GPT-2's pre-tokenization) whose first token is <|endoftext|>."""
  tokenizer = Tokenizer(models.BPE())
  tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
  tokenizer.decoder = decoders.ByteLevel()
  tokenizer.post_processor = processors.ByteLevel(trim_offsets=False)
  trainer = trainers.BpeTrainer(vocab_size=vocab_size, special_tokens=[EOT], show_progress=False,
                                initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
  tokenizer.train_from_iterator(texts, trainer, length=len(texts))
  return tokenizer


def hf_tokenizer(tokenizer: Tokenizer) -> transformers.PreTrainedTokenizerFast:
  """The tokenizer as transformers' fast tokenizer, <|endoftext|> its BOS, EOS and UNK (as
  GPT-2's); it adds no special tokens itself."""
  return transformers.PreTrainedTokenizerFast(
      tokenizer_object=tokenizer, bos_token=EOT, eos_token=EOT, unk_token=EOT,
      model_max_length=ARCHITECTURE["max_position_embeddings"])


def packed_tokens(tokenizer: Tokenizer, documents: list[Document]) -> np.ndarray:
  """The documents' token ids joined by <|endoftext|> between documents, int32."""
  eot = tokenizer.token_to_id(EOT)
  encodings = tokenizer.encode_batch([d.text for d in documents], add_special_tokens=False)
  ids: list[int] = []
  for index, encoding in enumerate(encodings):
    ids.extend(([eot] if index else []) + encoding.ids)
  return np.asarray(ids, np.int32)


def packed_sequences(stream: np.ndarray, seq_len: int) -> np.ndarray:
  """Non-overlapping [count, seq_len] sequences of `stream`, the remainder dropped."""
  count = len(stream) // seq_len
  return stream[:count * seq_len].reshape(count, seq_len)


def llama_config(vocab_size: int, eot_id: int) -> transformers.LlamaConfig:
  return transformers.LlamaConfig(**ARCHITECTURE, vocab_size=vocab_size, bos_token_id=eot_id,
                                  eos_token_id=eot_id, dtype="float32")


def next_token_nll(model: llama.Llama, params: Any, tokens: jax.Array) -> jax.Array:
  """[batch, seq - 1] NLL of each token given those before it in its sequence."""
  logits = model.apply({"params": params}, tokens[:, :-1])
  return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:])


def make_optimizer(lr: float, warmup_steps: int, steps: int, weight_decay: float
                   ) -> tuple[optax.GradientTransformation, optax.Schedule]:
  """AdamW (b2 0.95, gradients clipped to norm 1) with warm-up and cosine decay to lr / 10;
  weight decay on the matrices (projections, embedding), not the norm scales."""
  schedule = optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, steps, end_value=lr / 10)

  def matrices(params: Any) -> Any:
    return jax.tree.map(lambda leaf: leaf.ndim >= 2, params)

  optimizer = optax.chain(
      optax.clip_by_global_norm(1.0),
      optax.adamw(schedule, b1=0.9, b2=0.95, weight_decay=weight_decay, mask=matrices))
  return optimizer, schedule


def random_windows(stream: np.ndarray, rng: np.random.Generator, batch_size: int,
                   seq_len: int) -> np.ndarray:
  """[batch_size, seq_len] windows of `stream` at uniformly random offsets."""
  starts = rng.integers(0, len(stream) - seq_len + 1, size=batch_size)
  return stream[starts[:, None] + np.arange(seq_len)]


def perplexity(model: llama.Llama, params: Any, sequences: np.ndarray) -> float:
  """exp(mean next-token NLL) over every predicted token of `sequences`."""
  total_nll = jax.jit(lambda p, tokens: next_token_nll(model, p, tokens).sum())
  total = sum(float(total_nll(params, sequences[start:start + EVAL_BATCH]))
              for start in range(0, len(sequences), EVAL_BATCH))
  return math.exp(total / sequences[:, 1:].size)


def unigram_perplexity(train_stream: np.ndarray, sequences: np.ndarray, vocab_size: int) -> float:
  """The perplexity of `sequences`' predicted tokens under the train tokens' frequencies
  (add-one smoothed): the level a model that learned nothing of context reaches."""
  counts = np.bincount(train_stream, minlength=vocab_size) + 1.0
  log_probabilities = np.log(counts / counts.sum())
  return float(np.exp(-log_probabilities[sequences[:, 1:]].mean()))


def train(model: llama.Llama, train_stream: np.ndarray, test_sequences: np.ndarray
          ) -> tuple[Any, float]:
  """Trains from a seeded initialisation; returns the params and the mean training loss
  of the last --log_every steps. Prints progress and, every --eval_every steps, the test
  perplexity."""
  rng = np.random.default_rng(FLAGS.seed)
  params = model.init(jax.random.key(FLAGS.seed), jnp.zeros((1, FLAGS.seq_len), jnp.int32))
  params = params["params"]
  optimizer, schedule = make_optimizer(FLAGS.lr, FLAGS.warmup_steps, FLAGS.steps,
                                       FLAGS.weight_decay)

  @jax.jit
  def step(params, opt_state, tokens):
    loss, grads = jax.value_and_grad(lambda p: next_token_nll(model, p, tokens).mean())(params)
    updates, opt_state = optimizer.update(grads, opt_state, params)
    return optax.apply_updates(params, updates), opt_state, loss

  opt_state = optimizer.init(params)
  losses, start = [], time.time()
  for index in range(FLAGS.steps):
    tokens = random_windows(train_stream, rng, FLAGS.batch_size, FLAGS.seq_len)
    params, opt_state, loss = step(params, opt_state, tokens)
    losses.append(loss)
    done = index + 1
    if done % FLAGS.log_every == 0 or done == FLAGS.steps:
      recent = float(np.mean(jax.device_get(losses[-FLAGS.log_every:])))
      elapsed = time.time() - start
      speed = done * FLAGS.batch_size * FLAGS.seq_len / elapsed
      print(f"step {done}/{FLAGS.steps}: train loss {recent:.4f}, "
            f"lr {float(schedule(index)):.2e}, {speed:,.0f} tokens/s, {elapsed:.0f}s", flush=True)
    if FLAGS.eval_every and done % FLAGS.eval_every == 0 and done < FLAGS.steps:
      print(f"  test perplexity {perplexity(model, params, test_sequences):.2f}", flush=True)
  return params, recent


def logits_difference(folder: Path, model: llama.Llama, params: Any, tokens: np.ndarray,
                      vocab_size: int) -> float:
  """The largest |logit| difference between the trained model and the saved folder, read
  by `import_hf_decoder` and by transformers' Auto classes. Raises RuntimeError (a bug,
  not bad input) when the folder is not the trained model."""
  imported_model, imported_params, _ = import_hf_decoder(folder)
  same_params = jax.tree.all(jax.tree.map(np.array_equal, params, imported_params))
  ours = np.asarray(imported_model.apply({"params": imported_params}, tokens))
  trained = np.asarray(model.apply({"params": params}, tokens))
  hf_model = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
  with torch.no_grad():
    theirs = hf_model(torch.from_numpy(tokens).long()).logits.numpy()
  difference = float(max(np.abs(ours - theirs).max(), np.abs(trained - theirs).max()))
  tokenizer = transformers.AutoTokenizer.from_pretrained(folder)
  if not same_params or difference > LOGITS_TOLERANCE:
    raise RuntimeError(f"{folder} is not the trained model: params equal {same_params}, "
                       f"logits differ by {difference:.2e}")
  if len(tokenizer) != vocab_size or tokenizer.eos_token != EOT or tokenizer.bos_token != EOT:
    raise RuntimeError(f"{folder}'s tokenizer has {len(tokenizer)} tokens and eos/bos "
                       f"{tokenizer.eos_token!r}/{tokenizer.bos_token!r}")
  return difference


def architecture_summary() -> str:
  """`ARCHITECTURE` in words, wrapped for the model card."""
  sizes = ARCHITECTURE
  return (f"hidden {sizes['hidden_size']}, {sizes['num_hidden_layers']} layers, "
          f"{sizes['num_attention_heads']} heads,\n  {sizes['num_key_value_heads']} key/value "
          f"heads, SwiGLU MLP {sizes['intermediate_size']}, RMSNorm, rotary positions\n  "
          f"(theta {sizes['rope_theta']:g}, {sizes['max_position_embeddings']} positions), "
          f"{'tied' if sizes['tie_word_embeddings'] else 'untied'} embeddings")


def model_card(summary: dict[str, Any]) -> str:
  return (
      "# llm_tiny\n\n"
      "A 1M-parameter Llama (LlamaForCausalLM) trained from scratch on Python 3.11's\n"
      "documentation (pretrained/llm_tiny_text, PSF license), to measure jackpot_jax's\n"
      "language-model features on. Not a useful language model otherwise.\n\n"
      f"- architecture (config.json): {architecture_summary()}\n"
      f"- tokenizer: byte-level BPE, {summary['vocab_size']} tokens, {EOT} as BOS,\n"
      "  EOS and document separator; it adds no special tokens itself\n"
      f"- parameters: {summary['parameters']:,}\n"
      f"- training: {summary['tokens']:,} tokens ({FLAGS.steps} steps of {FLAGS.batch_size} "
      f"random {FLAGS.seq_len}-token\n  windows), AdamW, peak lr {FLAGS.lr}, seed {FLAGS.seed}\n"
      f"- train loss (last {FLAGS.log_every} steps): {summary['train_loss']:.4f}\n"
      f"- test perplexity: {summary['test_perplexity']:.2f} over {summary['test_tokens']:,} "
      f"predicted tokens (unigram: {summary['unigram_perplexity']:.1f}); the test documents\n"
      f"  joined by {EOT}, cut into non-overlapping {FLAGS.seq_len}-token sequences\n\n"
      "Reproduce: `python scripts/train_llm_tiny.py` (Debian's python3.11-doc installed).\n")


def save_model_folder(out: Path, config: transformers.LlamaConfig,
                      tokenizer: transformers.PreTrainedTokenizerFast, card: str,
                      model: llama.Llama, params: Any, check_tokens: np.ndarray) -> float:
  """Writes `out` through a random transformers model's folder and `export_hf_decoder`,
  checks it (`logits_difference`) and only then replaces the old `out`; returns the
  largest logit difference."""
  with tempfile.TemporaryDirectory() as scratch:
    template = Path(scratch) / "template"
    torch.manual_seed(FLAGS.seed)
    transformers.LlamaForCausalLM(config).save_pretrained(template)
    tokenizer.save_pretrained(template)
    (template / "README.md").write_text(card)
    with replacing_folder(out) as staging:
      export_hf_decoder(template, params, None, staging)
      return logits_difference(staging, model, params, check_tokens, config.vocab_size)


def cpu_model() -> str:
  """The CPU's model name and the core count."""
  return f"{report.cpu_name()}, {os.cpu_count()} cores"


def folder_bytes(folder: Path) -> int:
  return sum(path.stat().st_size for path in folder.rglob("*") if path.is_file())


def main(argv: list[str]) -> None:
  if len(argv) > 1:
    raise ValueError(f"unexpected arguments: {' '.join(argv[1:])}")
  if FLAGS.warmup_steps >= FLAGS.steps:
    raise ValueError(f"--warmup_steps={FLAGS.warmup_steps} must be fewer than "
                     f"--steps={FLAGS.steps}")
  start = time.time()
  splits = split_corpus(read_corpus(Path(FLAGS.corpus_dir)), FLAGS.test_percent,
                        FLAGS.train_bytes, FLAGS.test_bytes)
  text_out, out = Path(FLAGS.text_out), Path(FLAGS.out)
  write_text_dataset(splits, text_out, text_readme(splits, FLAGS.corpus_dir, FLAGS.test_percent))
  print(f"wrote {text_out}: " + ", ".join(
      f"{split} {len(docs)} documents ({text_bytes(docs):,} bytes)"
      for split, docs in splits.items()), flush=True)

  tokenizer = train_tokenizer([document.text for document in splits["train"]], FLAGS.vocab_size)
  vocab_size, eot_id = tokenizer.get_vocab_size(), tokenizer.token_to_id(EOT)
  train_stream = packed_tokens(tokenizer, splits["train"])
  test_sequences = packed_sequences(packed_tokens(tokenizer, splits["test"]), FLAGS.seq_len)
  print(f"tokenizer: {vocab_size} tokens; train {len(train_stream):,} tokens, test "
        f"{test_sequences.size:,} tokens in {len(test_sequences)} sequences", flush=True)

  config = llama_config(vocab_size, eot_id)
  model = llama.Llama(**llama.hf_model_kwargs(config.to_dict()))
  train_start = time.time()
  params, train_loss = train(model, train_stream, test_sequences)
  train_seconds = time.time() - train_start
  summary = dict(vocab_size=vocab_size, train_loss=train_loss,
                 parameters=sum(leaf.size for leaf in jax.tree.leaves(params)),
                 tokens=FLAGS.steps * FLAGS.batch_size * FLAGS.seq_len,
                 test_perplexity=perplexity(model, params, test_sequences),
                 test_tokens=test_sequences[:, 1:].size,
                 unigram_perplexity=unigram_perplexity(train_stream, test_sequences, vocab_size))
  difference = save_model_folder(out, config, hf_tokenizer(tokenizer), model_card(summary),
                                 model, params, test_sequences[:CHECKED_SEQUENCES])
  print(f"wrote {out} ({folder_bytes(out) / 1e6:.2f} MB; {text_out} "
        f"{folder_bytes(text_out) / 1e6:.2f} MB): import_hf_decoder and transformers agree "
        f"with the trained logits within {difference:.1e}")
  print(f"parameters       {summary['parameters']:,}\n"
        f"tokens trained   {summary['tokens']:,} ({FLAGS.steps} steps x {FLAGS.batch_size} x "
        f"{FLAGS.seq_len}; train split {len(train_stream):,} tokens)\n"
        f"train loss       {train_loss:.4f} (mean of the last {FLAGS.log_every} steps)\n"
        f"test perplexity  {summary['test_perplexity']:.2f} over {summary['test_tokens']:,} "
        f"predicted tokens (unigram {summary['unigram_perplexity']:.1f})\n"
        f"wall time        {time.time() - start:.0f}s (training {train_seconds:.0f}s)\n"
        f"machine          {cpu_model()}; jax {jax.__version__}, transformers "
        f"{transformers.__version__}", flush=True)


if __name__ == "__main__":
  entrypoint.run(main)
