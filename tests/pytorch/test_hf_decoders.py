"""Llama, Qwen2 and GPT-2 decoders against transformers: import, masks, export, errors.

Every folder is written by transformers' save_pretrained from a tiny random model (hidden
32, 2 layers, vocab 100) whose weights, norms and biases are all perturbed, so a
transposed, swapped or skipped tensor changes the logits.
"""

from __future__ import annotations

import json

import os

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util
from safetensors.torch import load_file, save_file

from tiny_decoders import random_causal_lm
from jackpot_jax import config_defaults
from jackpot_jax.run import spec as spec_lib
from jackpot_jax.errors import CheckpointMismatchError
from jackpot_jax.pytorch.hf_decoders import decoder_spec, export_hf_decoder, import_hf_decoder

# transformers would import TensorFlow (installed for TFDS) for its TF models: 7 s unused.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
import transformers  # noqa: E402

from conftest import random_kernel_masks  # noqa: E402

# Loading shards shows a tqdm bar, whose monitor thread would outlive the test.
transformers.logging.disable_progress_bar()

VOCAB = 100
TOKENS = np.random.default_rng(0).integers(0, VOCAB, size=(2, 7)).astype(np.int32)


def _llama_config(**overrides):
  values = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
  values.update(overrides)
  return transformers.LlamaConfig(**values)


def _qwen2_config(**overrides):
  values = dict(vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
                num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
  values.update(overrides)
  return transformers.Qwen2Config(**values)


def _gpt2_config(**overrides):
  values = dict(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4, n_positions=16)
  values.update(overrides)
  return transformers.GPT2Config(**values)


def _save(config, folder, dtype=torch.float32, **save_kwargs):
  random_causal_lm(config).to(dtype).save_pretrained(folder, **save_kwargs)
  return folder


def _hf_logits(folder, masks_of=None, attention_mask=None) -> np.ndarray:
  """transformers' float32 logits of TOKENS for the folder (weights W * M with masks)."""
  model = transformers.AutoModelForCausalLM.from_pretrained(
      folder, torch_dtype=torch.float32, attn_implementation="eager").eval()
  if masks_of is not None:
    with torch.no_grad():
      for name, mask in masks_of.items():
        model.get_parameter(name).mul_(torch.from_numpy(mask.astype(np.float32)))
  mask = None if attention_mask is None else torch.from_numpy(attention_mask).long()
  with torch.no_grad():
    return model(torch.from_numpy(TOKENS).long(), attention_mask=mask).logits.numpy()


def _our_logits(model, params, masks=None) -> np.ndarray:
  variables = {"params": params} if masks is None else {"params": params, "masks": masks}
  return np.asarray(model.apply(variables, TOKENS))


def _random_masks(params, hf_config) -> dict:
  """About half the weights of every kernel the model masks by default."""
  maskable = decoder_spec(hf_config).maskable
  flat = traverse_util.flatten_dict(random_kernel_masks(params, seed=1))
  return traverse_util.unflatten_dict({path: mask for path, mask in flat.items()
                                       if maskable(path, mask.shape)})


def _torch_masks(model, masks) -> dict[str, np.ndarray]:
  """The masks by transformers' parameter name, in its layout."""
  out = {}
  for path, mask in traverse_util.flatten_dict(masks).items():
    key, transform = model.hf_tensor(path)
    out[key] = mask.T if transform == "linear" else mask
  return out


@pytest.mark.parametrize("kv_heads,tied,overrides", [
    (1, False, {}),
    (2, True, {"rope_scaling": {"rope_type": "linear", "factor": 4.0}}),
    (4, False, {"rope_scaling": {"rope_type": "llama3", "factor": 8.0, "low_freq_factor": 1.0,
                                 "high_freq_factor": 4.0,
                                 "original_max_position_embeddings": 64}}),
    (2, False, {"attention_bias": True, "mlp_bias": True, "head_dim": 16,
                "rope_theta": 500.0}),
], ids=["mqa-untied", "gqa2-tied-linear", "mha-llama3", "biases-head_dim"])
def test_llama_logits_match_transformers(tmp_path, kv_heads, tied, overrides):
  folder = _save(_llama_config(num_key_value_heads=kv_heads, tie_word_embeddings=tied,
                               **overrides), tmp_path / "llama")
  model, params, hf_config = import_hf_decoder(folder)
  assert hf_config["num_key_value_heads"] == kv_heads
  assert ("lm_head" in params) == (not tied)
  np.testing.assert_allclose(_our_logits(model, params), _hf_logits(folder), atol=1e-4)


def test_qwen2_with_query_key_value_biases_matches_transformers(tmp_path):
  folder = _save(_qwen2_config(), tmp_path / "qwen2")
  model, params, _ = import_hf_decoder(folder)
  attention = params["model"]["layers_0"]["self_attn"]
  assert {"q_proj", "k_proj", "v_proj"} <= {n for n in attention if "bias" in attention[n]}
  assert "bias" not in attention["o_proj"]
  np.testing.assert_allclose(_our_logits(model, params), _hf_logits(folder), atol=1e-4)


@pytest.mark.parametrize("overrides", [
    {},
    {"tie_word_embeddings": False, "scale_attn_by_inverse_layer_idx": True, "n_inner": 40,
     "activation_function": "gelu"},
], ids=["tied", "untied-inverse_layer_scale"])
def test_gpt2_logits_match_transformers(tmp_path, overrides):
  folder = _save(_gpt2_config(**overrides), tmp_path / "gpt2")
  model, params, _ = import_hf_decoder(folder)
  np.testing.assert_allclose(_our_logits(model, params), _hf_logits(folder), atol=1e-4)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_half_precision_folder_imports_its_stored_values(tmp_path, dtype):
  folder = _save(_llama_config(), tmp_path / "half", dtype=dtype)
  stored = load_file(folder / "model.safetensors")["model.layers.1.mlp.down_proj.weight"]
  assert stored.dtype == dtype
  model, params, _ = import_hf_decoder(folder)
  kernel = params["model"]["layers_1"]["mlp"]["down_proj"]["kernel"]
  assert kernel.dtype == np.float32
  np.testing.assert_array_equal(np.asarray(kernel).T, stored.float().numpy())
  np.testing.assert_allclose(_our_logits(model, params), _hf_logits(folder), atol=1e-4)
  _, half_params, _ = import_hf_decoder(folder, dtype="bfloat16")
  assert half_params["model"]["norm"]["scale"].dtype == np.dtype("bfloat16")


def test_sharded_folder_matches_transformers(tmp_path):
  folder = _save(_llama_config(), tmp_path / "sharded", max_shard_size="20KB")
  assert (folder / "model.safetensors.index.json").is_file()
  assert len(list(folder.glob("model-*.safetensors"))) > 1
  model, params, _ = import_hf_decoder(folder)
  np.testing.assert_allclose(_our_logits(model, params), _hf_logits(folder), atol=1e-4)


@pytest.mark.parametrize("config", [_llama_config, _gpt2_config], ids=["llama", "gpt2"])
def test_masked_logits_equal_transformers_with_masked_weights(tmp_path, config):
  folder = _save(config(), tmp_path / "model")
  model, params, hf_config = import_hf_decoder(folder)
  masks = _random_masks(params, hf_config)
  masked = _our_logits(model, params, masks)
  assert not np.allclose(masked, _our_logits(model, params), atol=1e-2)
  np.testing.assert_allclose(masked, _hf_logits(folder, _torch_masks(model, masks)), atol=1e-4)


@pytest.mark.parametrize("config", [_llama_config, _gpt2_config], ids=["llama", "gpt2"])
def test_padding_mask_under_jit_matches_transformers(tmp_path, config):
  folder = _save(config(), tmp_path / "model")
  model, params, _ = import_hf_decoder(folder)
  padding = np.ones(TOKENS.shape, np.int32)
  padding[0, 4:] = 0  # the first sequence has 4 tokens, then padding
  ours = jax.jit(lambda p, t, m: model.apply({"params": p}, t, attention_mask=m))(
      params, TOKENS, padding)
  np.testing.assert_allclose(np.asarray(ours), _hf_logits(folder, attention_mask=padding),
                             atol=1e-4)
  assert not np.allclose(np.asarray(ours)[0, 4:], _our_logits(model, params)[0, 4:],
                         atol=1e-2)


def test_default_masks_cover_the_block_projections_only(tmp_path):
  folder = _save(_llama_config(tie_word_embeddings=False), tmp_path / "llama")
  _, params, hf_config = import_hf_decoder(folder)
  names = {"/".join(path) for path in traverse_util.flatten_dict(_random_masks(params, hf_config))}
  assert names == {f"model/layers_{i}/{part}/kernel" for i in range(2) for part in (
      "self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj", "self_attn/o_proj",
      "mlp/gate_proj", "mlp/up_proj", "mlp/down_proj")}


def test_export_round_trip_loads_in_transformers_with_masked_weights(tmp_path):
  folder = _save(_llama_config(), tmp_path / "source", dtype=torch.bfloat16,
                 max_shard_size="20KB")
  (folder / "tokenizer_config.json").write_text('{"model_max_length": 64}\n')
  model, params, hf_config = import_hf_decoder(folder)
  masks = _random_masks(params, hf_config)
  out = export_hf_decoder(folder, params, masks, tmp_path / "jackpot")

  assert (out / "tokenizer_config.json").read_text() == '{"model_max_length": 64}\n'
  assert json.loads((out / "config.json").read_text()) == json.loads(
      (folder / "config.json").read_text())
  source_index = json.loads((folder / "model.safetensors.index.json").read_text())
  out_index = json.loads((out / "model.safetensors.index.json").read_text())
  assert out_index == source_index
  source_tensors, out_tensors = {}, {}
  for shard in set(source_index["weight_map"].values()):
    source_tensors.update(load_file(folder / shard))
    out_tensors.update(load_file(out / shard))
  assert set(out_tensors) == set(source_tensors)
  torch_masks = _torch_masks(model, masks)
  for key, tensor in out_tensors.items():
    assert tensor.dtype == torch.bfloat16
    expected = source_tensors[key]
    if key in torch_masks:
      expected = torch.where(torch.from_numpy(torch_masks[key]).bool(), expected,
                             torch.zeros((), dtype=expected.dtype))
    torch.testing.assert_close(tensor, expected, rtol=0, atol=0)
  np.testing.assert_allclose(_hf_logits(out), _our_logits(model, params, masks), atol=1e-4)


def test_gpt2_base_model_folder_with_mask_buffers_round_trips_as_stored(tmp_path):
  """GPT-2's own checkpoints store the base model (h.0... without transformer.) with
  causal-mask buffers: they import as transformers loads them and export unchanged."""
  folder = _save(_gpt2_config(), tmp_path / "gpt2")
  tensors = load_file(folder / "model.safetensors")
  stored = {key.removeprefix("transformer."): value for key, value in tensors.items()}
  for i in range(2):
    stored[f"h.{i}.attn.bias"] = torch.tril(torch.ones(1, 1, 16, 16, dtype=torch.bool))
    stored[f"h.{i}.attn.masked_bias"] = torch.tensor(-1e4)
  save_file(stored, folder / "model.safetensors", metadata={"format": "pt"})
  model, params, _ = import_hf_decoder(folder)
  np.testing.assert_allclose(_our_logits(model, params), _hf_logits(folder), atol=1e-4)
  out = export_hf_decoder(folder, params, None, tmp_path / "out")
  exported = load_file(out / "model.safetensors")
  assert set(exported) == set(stored)
  for key, value in stored.items():
    torch.testing.assert_close(exported[key], value, rtol=0, atol=0)


def _without(folder, key):
  tensors = load_file(folder / "model.safetensors")
  del tensors[key]
  save_file(tensors, folder / "model.safetensors")


@pytest.mark.parametrize("change,message", [
    (lambda f: (f / "config.json").unlink(), "has no config.json"),
    (lambda f: _edit_config(f, model_type="bert"), "model_type 'bert' is not supported"),
    (lambda f: _edit_config(f, architectures=["LlamaForSequenceClassification"]),
     "describes LlamaForSequenceClassification"),
    (lambda f: _edit_config(f, rope_scaling={"rope_type": "yarn", "factor": 2.0}),
     "rope_scaling type 'yarn' is not supported"),
    (lambda f: _without(f, "model.layers.1.mlp.up_proj.weight"),
     "1 missing tensors (model.layers.1.mlp.up_proj.weight)"),
    (lambda f: _edit_config(f, intermediate_size=40),
     "6 shape mismatches (model.layers.0.mlp.down_proj.weight (32, 48) vs model (32, 40)"),
    (lambda f: (f / "model.safetensors").unlink(), "has neither model.safetensors"),
], ids=["no-config", "model_type", "architecture", "rope-type", "missing", "shapes",
        "no-weights"])
def test_bad_folders_raise_one_line(tmp_path, change, message):
  folder = _save(_llama_config(), tmp_path / "llama")
  change(folder)
  with pytest.raises(ValueError) as error:
    import_hf_decoder(folder)
  assert message in str(error.value)
  assert "\n" not in str(error.value)


def test_unexpected_tensor_is_named(tmp_path):
  folder = _save(_llama_config(), tmp_path / "llama")
  tensors = load_file(folder / "model.safetensors")
  tensors["model.layers.0.self_attn.extra.weight"] = torch.zeros(2)
  save_file(tensors, folder / "model.safetensors")
  with pytest.raises(CheckpointMismatchError, match=r"1 unexpected tensors "
                     r"\(model\.layers\.0\.self_attn\.extra\.weight\)"):
    import_hf_decoder(folder)


def _edit_config(folder, **changes):
  config = json.loads((folder / "config.json").read_text())
  config.update(changes)
  (folder / "config.json").write_text(json.dumps(config))


def test_export_refuses_masks_outside_the_blocks_and_a_used_folder(tmp_path):
  folder = _save(_llama_config(), tmp_path / "llama")
  model, params, _ = import_hf_decoder(folder)
  head = {"lm_head": {"kernel": np.ones(params["lm_head"]["kernel"].shape)}}
  with pytest.raises(CheckpointMismatchError, match="lm_head/kernel is no maskable kernel"):
    export_hf_decoder(folder, params, head, tmp_path / "out")
  assert not (tmp_path / "out").exists()
  with pytest.raises(ValueError, match="already exists and is not an empty folder"):
    export_hf_decoder(folder, params, None, folder)


def test_the_image_search_refuses_a_language_model():
  config = config_defaults.base_config()
  config.model.name = "gpt2"
  with pytest.raises(ValueError, match="model.name='gpt2' is a language model"):
    spec_lib.resolve(config)
