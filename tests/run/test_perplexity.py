"""Perplexity by the packed protocol against a direct transformers computation on a tiny
random Llama, masked (W * M), sharded over devices, and its one-line errors."""

from __future__ import annotations

import os
import re

import numpy as np
import pytest
import torch
from flax import traverse_util

from jackpot_jax import errors
from jackpot_jax.models import llama
from jackpot_jax.pytorch.hf_decoders import decoder_spec, import_hf_decoder
from jackpot_jax.run import parallel, perplexity as perplexity_lib

# transformers would import TensorFlow (installed for TFDS) for its TF models: unused.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
import transformers  # noqa: E402

from conftest import random_kernel_masks  # noqa: E402
from tiny_text import EOT, documents, packed, write_text_folder, write_tokenizer  # noqa: E402

SEQ_LEN = 16
TRAIN, TEST = documents(20, seed=0), documents(5, seed=1)


@pytest.fixture(scope="module")
def folders(tmp_path_factory):
  """(model folder with its tokenizer, text folder, token cache): a random Llama whose
  vocabulary is the tokenizer's."""
  root = tmp_path_factory.mktemp("llm")
  model_folder = write_tokenizer(root / "model", TRAIN)
  config = transformers.LlamaConfig(vocab_size=300, hidden_size=32, intermediate_size=48,
                                    num_hidden_layers=2, num_attention_heads=4,
                                    num_key_value_heads=2, max_position_embeddings=64,
                                    eos_token_id=0)
  torch.manual_seed(0)
  model = transformers.LlamaForCausalLM(config)
  with torch.no_grad():
    for param in model.parameters():
      param.add_(torch.randn_like(param) * 0.2)
  model.save_pretrained(model_folder)
  text_folder = write_text_folder(root / "text", {"train": TRAIN, "test": TEST})
  return model_folder, text_folder, root / "cache"


def _data(folders, **overrides) -> dict:
  model_folder, text_folder, cache = folders
  return {"name": f"text:{text_folder}", "tokenizer": str(model_folder), "seq_len": SEQ_LEN,
          "token_cache_dir": str(cache), "holdout_sequences": 3, **overrides}


def _torch_perplexity(model_folder, sequences: np.ndarray, masks_of=None) -> float:
  """exp(mean NLL of every token after the first of each sequence), by transformers."""
  model = transformers.LlamaForCausalLM.from_pretrained(model_folder,
                                                        attn_implementation="eager").eval()
  with torch.no_grad():
    for name, mask in (masks_of or {}).items():
      model.get_parameter(name).mul_(torch.from_numpy(mask.astype(np.float32)))
    tokens = torch.from_numpy(sequences).long()
    logits = model(tokens).logits[:, :-1].double()
  nll = torch.nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]),
                                          tokens[:, 1:].reshape(-1))
  return float(torch.exp(nll))


def _decoder_masks(model, params, hf_config) -> tuple[dict, dict]:
  """Random masks of the kernels the decoder masks, and the same by transformers' name."""
  maskable = decoder_spec(hf_config).maskable
  flat = {path: mask for path, mask in
          traverse_util.flatten_dict(random_kernel_masks(params, seed=1)).items()
          if maskable(path, mask.shape)}
  by_name = {}
  for path, mask in flat.items():
    key, transform = model.hf_tensor(path)
    by_name[key] = mask.T if transform == "linear" else mask
  return traverse_util.unflatten_dict(flat), by_name


def test_perplexity_is_the_packed_protocol_computed_by_transformers(folders):
  model_folder = folders[0]
  model, params, hf_config = import_hf_decoder(model_folder)
  sequences = packed(model_folder, TEST, SEQ_LEN)
  result = perplexity_lib.perplexity(model, params, _data(folders), batch_size=3)
  assert (result.sequences, result.tokens) == (len(sequences), len(sequences) * (SEQ_LEN - 1))
  np.testing.assert_allclose(result.perplexity, _torch_perplexity(model_folder, sequences),
                             rtol=1e-5)
  np.testing.assert_allclose(result.nll, np.log(result.perplexity), rtol=1e-12)

  masks, masks_of = _decoder_masks(model, params, hf_config)
  masked = perplexity_lib.perplexity(model, params, _data(folders), masks=masks, batch_size=3)
  np.testing.assert_allclose(masked.perplexity,
                             _torch_perplexity(model_folder, sequences, masks_of), rtol=1e-5)
  assert abs(masked.perplexity - result.perplexity) > 1e-3 * result.perplexity


def test_one_device_and_eight_give_the_same_perplexity_over_any_split(folders):
  model, params, _ = import_hf_decoder(folders[0])
  data = _data(folders)
  for split in ("test", "holdout"):
    one = perplexity_lib.perplexity(model, params, data, split=split, batch_size=2,
                                    mesh=parallel.make_mesh(num_devices=1))
    eight = perplexity_lib.perplexity(model, params, data, split=split, batch_size=5,
                                      mesh=parallel.make_mesh(num_devices=8))
    assert one.tokens == eight.tokens
    np.testing.assert_allclose(eight.perplexity, one.perplexity, rtol=1e-5)
  assert one.sequences == 3


def test_describe_names_the_protocol_for_the_report(folders):
  sequences = len(packed(folders[0], TEST, SEQ_LEN))
  assert perplexity_lib.describe(_data(folders)) == {
      "protocol": "packed", "split": "test", "seq_len": SEQ_LEN, "sequences": sequences,
      "tokens": sequences * (SEQ_LEN - 1), "separator": EOT}
  assert perplexity_lib.describe(_data(folders), "holdout")["sequences"] == 3


@pytest.mark.parametrize("case,message", [
    ("vocabulary", r"token ids up to \d+, beyond the model's vocab_size 100"),
    ("no_holdout", r"the holdout split of text:\S+ has no sequences"),
    ("images", r"perplexity needs text data"),
])
def test_bad_input_is_one_line_with_exit_status_2(folders, capsys, case, message):
  data = _data(folders)
  model = llama.Llama(vocab_size=300 if case != "vocabulary" else 100, hidden_size=32,
                      intermediate_size=48, num_hidden_layers=1, num_attention_heads=4)
  split = "holdout" if case == "no_holdout" else None
  if case == "no_holdout":
    data.update(holdout_sequences=0)
  elif case == "images":
    data = {"name": "cifar10"}
  with pytest.raises(SystemExit) as exit_:
    with errors.exit_on_user_error("jackpot"):
      perplexity_lib.perplexity(model, None, data, split=split)
  lines = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines
