"""Magnitude, Wanda and SparseGPT for decoder language models against references written
here from the papers' rules: SparseGPT's published column loop on one weight matrix, Wanda's
per-output comparison, and both reference pipelines' block-by-block order run on
transformers' own model with PyTorch hooks."""

from __future__ import annotations

import os

import jax
import numpy as np
import pytest
import torch
from flax import traverse_util

from tiny_decoders import random_causal_lm
from jackpot_jax.baselines import llm_oneshot
from jackpot_jax.baselines.decoder_blocks import decoder_blocks
from jackpot_jax.baselines.layer_masks import magnitude_mask, wanda_mask
from jackpot_jax.baselines.sparsegpt import sparsegpt_prune
from jackpot_jax.pytorch.hf_decoders import decoder_spec, import_hf_decoder
from jackpot_jax.run import parallel
from jackpot_jax.search.masking import NMPattern, nm_group_counts

os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
import transformers  # noqa: E402
from transformers.pytorch_utils import Conv1D  # noqa: E402

VOCAB = 64
CALIBRATION = np.random.default_rng(0).integers(0, VOCAB, size=(4, 16)).astype(np.int32)
ONE_DEVICE = parallel.make_mesh(num_devices=1)


# ---- references -------------------------------------------------------------------------

def reference_sparsegpt(weight, hessian, sparsity=None, pattern=None, blocksize=128,
                        percdamp=0.01):
  """SparseGPT's `fasterprune` on an (out, in) weight in float64, with exact counts: each
  block prunes the int(sparsity * numel) lowest w^2 / [H^-1]_jj^2 (the published code's
  `<=` threshold prunes one more); N:M prunes m - n of every group of m columns."""
  W, H = weight.clone().double(), hessian.clone().double()
  rows, columns = W.shape
  dead = torch.diag(H) == 0
  H[dead, dead] = 1
  W[:, dead] = 0
  diagonal = torch.arange(columns)
  H[diagonal, diagonal] += percdamp * torch.mean(torch.diag(H))
  Hinv = torch.linalg.cholesky(torch.cholesky_inverse(torch.linalg.cholesky(H)), upper=True)
  pruned = torch.zeros_like(W, dtype=torch.bool)
  for i1 in range(0, columns, blocksize):
    i2 = min(i1 + blocksize, columns)
    W1, Hinv1 = W[:, i1:i2].clone(), Hinv[i1:i2, i1:i2]
    Q1, Err1 = torch.zeros_like(W1), torch.zeros_like(W1)
    mask1 = torch.zeros(W1.shape, dtype=torch.bool)
    if pattern is None:
      saliency = W1 ** 2 / torch.diag(Hinv1).reshape((1, -1)) ** 2
      lowest = torch.argsort(saliency.flatten())[:int(saliency.numel() * sparsity)]
      mask1.view(-1)[lowest] = True
    for i in range(i2 - i1):
      w, d = W1[:, i], Hinv1[i, i]
      if pattern is not None and i % pattern.m == 0:
        saliency = (W1[:, i:i + pattern.m] ** 2
                    / torch.diag(Hinv1)[i:i + pattern.m].reshape((1, -1)) ** 2)
        lowest = torch.topk(saliency, pattern.m - pattern.n, dim=1, largest=False)[1]
        mask1.scatter_(1, i + lowest, True)
      q = w.clone()
      q[mask1[:, i]] = 0
      Q1[:, i] = q
      err1 = (w - q) / d
      W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
      Err1[:, i] = err1
    W[:, i1:i2] = Q1
    pruned[:, i1:i2] = mask1
    W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
  return ~pruned, W


def reference_wanda(weight, inputs, sparsity=None, pattern=None):
  """Wanda's `prune_wanda` on an (out, in) weight: |W| * ||X_j||_2, the int(in * sparsity)
  lowest of each row pruned, or m - n of every group of m columns of a row."""
  metric = weight.abs().double() * inputs.double().norm(dim=0)[None, :]
  pruned = torch.zeros_like(metric, dtype=torch.bool)
  if pattern is None:
    lowest = torch.sort(metric, dim=-1, stable=True)[1][:, :int(metric.shape[1] * sparsity)]
    pruned.scatter_(1, lowest, True)
  else:
    for i in range(0, metric.shape[1], pattern.m):
      lowest = torch.topk(metric[:, i:i + pattern.m], pattern.m - pattern.n, dim=1,
                          largest=False)[1]
      pruned.scatter_(1, i + lowest, True)
  return ~pruned, torch.where(pruned, torch.zeros((), dtype=weight.dtype), weight)


class _FirstBlockReached(Exception):
  """Stops the model once the first block's inputs are caught (the references' Catcher)."""


def reference_pipeline(hf_model, tokens, prune, propagate_pruned=True):
  """Both papers' block-by-block loop on transformers' model: catch the first block's
  inputs, then per block collect every linear layer's inputs in one dense pass, prune each
  layer from its own, and feed the next block the (pruned) block's outputs.

  Returns {module name: kept mask in Flax (in, out) layout}; the model is pruned in place.
  """
  blocks = (hf_model.model.layers if hasattr(hf_model, "model") else hf_model.transformer.h)
  inputs, call = [], {}

  def catch(module, args, kwargs):
    inputs.append(args[0])
    call.update(kwargs)
    raise _FirstBlockReached

  hook = blocks[0].register_forward_pre_hook(catch, with_kwargs=True)
  for sequence in tokens:
    with pytest.raises(_FirstBlockReached):
      hf_model(torch.from_numpy(sequence[None]).long(), use_cache=False)
  hook.remove()
  masks = {}
  prefix = {id(block): name for name, block in hf_model.named_modules()}
  for block in blocks:
    linears = {f"{prefix[id(block)]}.{name}": module for name, module in block.named_modules()
               if isinstance(module, (torch.nn.Linear, Conv1D))}
    captured = {name: [] for name in linears}
    hooks = [module.register_forward_hook(
        lambda m, args, out, name=name: captured[name].append(
            args[0].reshape(-1, args[0].shape[-1]))) for name, module in linears.items()]
    dense_outputs = [_output(block(x, **call)) for x in inputs]
    for hook in hooks:
      hook.remove()
    for name, module in linears.items():
      conv1d = isinstance(module, Conv1D)
      weight = module.weight.data.T if conv1d else module.weight.data
      kept, updated = prune(weight, torch.cat(captured[name]), len(inputs))
      masks[name] = kept.numpy().T
      module.weight.data = (updated.T if conv1d else updated).to(module.weight.dtype)
    inputs = [_output(block(x, **call)) for x in inputs] if propagate_pruned else dense_outputs
  return masks


def _output(block_output):
  return block_output[0] if isinstance(block_output, tuple) else block_output


def _sparsegpt_of(sparsity=None, pattern=None):
  def prune(weight, inputs, num_sequences):
    hessian = 2 * inputs.double().T @ inputs.double() / num_sequences
    return reference_sparsegpt(weight, hessian, sparsity, pattern)
  return prune


def _wanda_of(sparsity=None, pattern=None):
  return lambda weight, inputs, num_sequences: reference_wanda(weight, inputs, sparsity, pattern)


# ---- one layer --------------------------------------------------------------------------

def _calibration_layer(rows=24, columns=80, tokens=200):
  """An (out, in) weight and correlated inputs of uneven scales with one channel no token
  reaches (SparseGPT zeroes its weights)."""
  rng = np.random.default_rng(1)
  mixing = np.eye(columns) + 0.3 * rng.normal(size=(columns, columns)) / np.sqrt(columns)
  inputs = (rng.normal(size=(tokens, columns)) * rng.uniform(0.2, 3.0, columns)) @ mixing
  inputs[:, 5] = 0.0
  weight = rng.normal(size=(rows, columns))
  return weight.astype(np.float32), inputs.astype(np.float32)


def _hessian(inputs):
  return (2.0 * inputs.astype(np.float64).T @ inputs / len(inputs)).astype(np.float32)


@pytest.mark.parametrize("sparsity", [0.5, NMPattern(2, 4)], ids=str)
def test_sparsegpt_layer_matches_the_published_algorithm(sparsity):
  """Blocks of 32 columns over 80 inputs: two whole blocks and a narrower last one."""
  weight, inputs = _calibration_layer()
  unstructured = not isinstance(sparsity, NMPattern)
  kept, updated = reference_sparsegpt(
      torch.from_numpy(weight), torch.from_numpy(_hessian(inputs)),
      sparsity if unstructured else None, None if unstructured else sparsity, blocksize=32)
  mask, kernel = sparsegpt_prune(weight.T, _hessian(inputs), sparsity, blocksize=32)
  mask, kernel = np.asarray(mask), np.asarray(kernel)
  assert mask.dtype == np.bool_ and kernel.dtype == np.float32
  np.testing.assert_array_equal(mask, kept.numpy().T)
  np.testing.assert_allclose(kernel, updated.numpy().T, atol=2e-5)
  assert np.all(kernel[~mask] == 0) and np.all(kernel[5] == 0)
  if unstructured:  # int(0.5 * 24 * width) of every block of columns
    assert [int(np.sum(~mask[a:b])) for a, b in ((0, 32), (32, 64), (64, 80))] == [
        384, 384, 192]
  else:
    assert np.all(np.asarray(nm_group_counts(mask, 4)) == 2)


@pytest.mark.parametrize("sparsity", [0.5, NMPattern(2, 4)], ids=str)
def test_wanda_layer_compares_each_outputs_weights(sparsity):
  weight, inputs = _calibration_layer()
  unstructured = not isinstance(sparsity, NMPattern)
  kept, _ = reference_wanda(torch.from_numpy(weight), torch.from_numpy(inputs),
                            sparsity if unstructured else None,
                            None if unstructured else sparsity)
  mask = np.asarray(wanda_mask(weight.T, np.linalg.norm(inputs, axis=0), sparsity))
  np.testing.assert_array_equal(mask, kept.numpy().T)
  if unstructured:
    assert np.all(mask.sum(axis=0) == 40)  # every output keeps 80 - int(0.5 * 80)
  else:
    assert np.all(np.asarray(nm_group_counts(mask, 4)) == 2)


def test_magnitude_layer_keeps_the_largest_of_the_whole_layer():
  weight, _ = _calibration_layer()
  mask = np.asarray(magnitude_mask(weight.T, 0.7))
  order = np.argsort(np.abs(weight.T).ravel(), kind="stable")
  expected = np.ones(weight.size, bool)
  expected[order[:int(0.7 * weight.size)]] = False
  np.testing.assert_array_equal(mask, expected.reshape(mask.shape))
  assert len(set(mask.sum(axis=0))) > 1  # the layer, not each output, is the group
  assert np.all(np.asarray(nm_group_counts(magnitude_mask(weight.T, NMPattern(1, 4)), 4)) == 1)


def test_sparsegpt_reconstructs_the_calibration_outputs_best():
  weight, inputs = _calibration_layer()
  dense = inputs @ weight.T
  mask, kernel = sparsegpt_prune(weight.T, _hessian(inputs), 0.5, blocksize=32)

  def error(kernel):
    return float(np.sum((inputs @ np.asarray(kernel) - dense) ** 2))

  wanda = np.asarray(wanda_mask(weight.T, np.linalg.norm(inputs, axis=0), 0.5))
  magnitude = np.asarray(magnitude_mask(weight.T, 0.5))
  assert np.sum(mask) == np.sum(wanda) == np.sum(magnitude)
  assert error(kernel) < error(weight.T * wanda) < error(weight.T * magnitude)
  assert error(kernel) < error(weight.T * np.asarray(mask))  # the update itself helps


# ---- whole decoders ---------------------------------------------------------------------

CONFIGS = {
    "llama-gqa": lambda: transformers.LlamaConfig(
        vocab_size=VOCAB, hidden_size=32, intermediate_size=48, num_hidden_layers=2,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64),
    # The MLP's width is Llama's, so the two share compiled layer shapes.
    "gpt2": lambda: transformers.GPT2Config(vocab_size=VOCAB, n_embd=32, n_layer=2, n_head=4,
                                            n_positions=16, n_inner=48),
}


def _imported(name, tmp_path_factory):
  """(folder, model, params, hf_config) of a tiny random decoder saved by transformers."""
  folder = tmp_path_factory.mktemp(name)
  random_causal_lm(CONFIGS[name]()).save_pretrained(folder)
  return (folder, *import_hf_decoder(folder))


@pytest.fixture(scope="module")
def llama(tmp_path_factory):
  return _imported("llama-gqa", tmp_path_factory)


@pytest.fixture(scope="module")
def gpt2(tmp_path_factory):
  return _imported("gpt2", tmp_path_factory)


@pytest.fixture(params=["llama", "gpt2"])
def decoder(request):
  return request.getfixturevalue(request.param)


def _module_name(model, path):
  return model.hf_tensor(path)[0].removesuffix(".weight")


def _flat(tree):
  return {path: np.asarray(leaf) for path, leaf in traverse_util.flatten_dict(tree).items()}


def test_blocks_are_found_with_their_projections_grouped_by_the_tensor_they_read(llama, gpt2):
  def described(imported):
    _, model, params, hf_config = imported
    blocks = decoder_blocks(model, params, decoder_spec(hf_config).maskable, (1, 4))
    return [("/".join(block.path), type(block.module).__name__,
             [["/".join(path[:-1]) for path in group] for group in block.input_groups])
            for block in blocks]

  llama_groups = [["self_attn/q_proj", "self_attn/k_proj", "self_attn/v_proj"],
                  ["self_attn/o_proj"], ["mlp/gate_proj", "mlp/up_proj"], ["mlp/down_proj"]]
  assert described(llama) == [(f"model/layers_{i}", "DecoderLayer", llama_groups)
                              for i in range(2)]
  gpt2_groups = [["attn/c_attn"], ["attn/c_proj"], ["mlp/c_fc"], ["mlp/c_proj"]]
  assert described(gpt2) == [(f"transformer/h_{i}", "Block", gpt2_groups) for i in range(2)]


@pytest.mark.parametrize("method,sparsity", [("wanda", NMPattern(2, 4)), ("sparsegpt", 0.5)],
                         ids=str)
def test_decoder_pruning_matches_the_reference_pipeline(decoder, method, sparsity):
  folder, model, params, hf_config = decoder
  result = llm_oneshot.prune_decoder(method, model, params, hf_config, CALIBRATION, sparsity,
                                     mesh=ONE_DEVICE, batch_size=2)
  unstructured = not isinstance(sparsity, NMPattern)
  reference_of = _wanda_of if method == "wanda" else _sparsegpt_of
  reference = transformers.AutoModelForCausalLM.from_pretrained(folder).eval()
  with torch.no_grad():
    expected = reference_pipeline(reference, CALIBRATION, reference_of(
        sparsity if unstructured else None, None if unstructured else sparsity))
  masks, new_params, old_params = _flat(result.masks), _flat(result.params), _flat(params)
  maskable = decoder_spec(hf_config).maskable
  assert set(masks) == {p for p, v in old_params.items() if maskable(p, v.shape)}
  assert {_module_name(model, path) for path in masks} == set(expected)
  for path, mask in masks.items():
    assert mask.dtype == np.bool_
    np.testing.assert_array_equal(mask, expected[_module_name(model, path)], err_msg=str(path))
  reference_params = reference.state_dict()
  for path, value in new_params.items():
    if path in masks and method == "sparsegpt":
      key, transform = model.hf_tensor(path)
      torch_weight = reference_params[key].numpy()
      np.testing.assert_allclose(value, torch_weight.T if transform == "linear" else torch_weight,
                                 atol=5e-5, err_msg=str(path))
    else:  # embeddings, norms, biases, the head; and every weight for Wanda
      np.testing.assert_array_equal(value, old_params[path], err_msg=str(path))


def test_the_second_block_is_calibrated_on_the_pruned_first_block(llama):
  folder, model, params, hf_config = llama
  pattern = NMPattern(2, 4)
  masks = _flat(llm_oneshot.prune_decoder("wanda", model, params, hf_config, CALIBRATION,
                                          pattern, mesh=ONE_DEVICE, batch_size=2).masks)
  with torch.no_grad():
    dense_fed = reference_pipeline(transformers.AutoModelForCausalLM.from_pretrained(folder),
                                   CALIBRATION, _wanda_of(pattern=pattern),
                                   propagate_pruned=False)
  first = [p for p in masks if p[1] == "layers_0"]
  second = [p for p in masks if p[1] == "layers_1"]
  for path in first:  # the same inputs either way
    np.testing.assert_array_equal(masks[path], dense_fed[_module_name(model, path)])
  assert any(not np.array_equal(masks[p], dense_fed[_module_name(model, p)]) for p in second)


@pytest.mark.eight_devices
def test_calibration_split_over_two_devices_gives_the_one_device_result(llama):
  """The statistics are sums over batches split between the devices; the second block's
  masks also depend on the first block's outputs, computed split."""
  _, model, params, hf_config = llama
  tokens = np.concatenate([CALIBRATION, CALIBRATION[:, ::-1]])
  pattern = NMPattern(2, 4)
  one = llm_oneshot.prune_decoder("wanda", model, params, hf_config, tokens, pattern,
                                  mesh=ONE_DEVICE, batch_size=2)
  two = llm_oneshot.prune_decoder("wanda", model, params, hf_config, tokens, pattern,
                                  mesh=parallel.make_mesh(num_devices=2), batch_size=4)
  assert _flat(two.masks).keys() == _flat(one.masks).keys()
  for path, mask in _flat(one.masks).items():
    np.testing.assert_array_equal(_flat(two.masks)[path], mask, err_msg=str(path))


def test_bfloat16_params_are_pruned_in_float32_and_returned_in_bfloat16(llama):
  folder = llama[0]
  model, params, hf_config = import_hf_decoder(folder, dtype="bfloat16")
  result = llm_oneshot.prune_decoder("sparsegpt", model, params, hf_config, CALIBRATION, 0.5,
                                     mesh=ONE_DEVICE, batch_size=2)
  masks, new_params = _flat(result.masks), traverse_util.flatten_dict(result.params)
  for path, mask in masks.items():
    kernel = new_params[path]
    assert kernel.dtype == jax.numpy.bfloat16
    assert np.all(np.asarray(kernel, np.float32)[~mask] == 0)
    assert np.sum(~mask) == mask.size // 2


def test_baselines_are_registered_by_name_and_checked(llama):
  _, model, params, hf_config = llama
  assert llm_oneshot.llm_baseline_names() == ("magnitude", "wanda", "sparsegpt")
  result = llm_oneshot.prune_decoder("magnitude", model, params, hf_config, CALIBRATION,
                                     NMPattern(2, 4), mesh=ONE_DEVICE)
  assert result.params is params
  for path, mask in _flat(result.masks).items():
    groups = np.abs(_flat(params)[path]).reshape(-1, 4, mask.shape[1])  # (groups, 4, out)
    largest = np.argsort(-groups, axis=1, kind="stable")[:, :2]
    expected = np.zeros(groups.shape, bool)
    np.put_along_axis(expected, largest, True, axis=1)
    np.testing.assert_array_equal(mask, expected.reshape(mask.shape), err_msg=str(path))
  with pytest.raises(ValueError, match=r"unknown language-model baseline 'sparse_gpt' \(did "
                     r"you mean 'sparsegpt'\?\); choose one of magnitude, wanda, sparsegpt"):
    llm_oneshot.prune_decoder("sparse_gpt", model, params, hf_config, CALIBRATION, 0.5)
  with pytest.raises(ValueError, match="sparsity must be a fraction in"):
    llm_oneshot.prune_decoder("wanda", model, params, hf_config, CALIBRATION, 1.0)
  with pytest.raises(ValueError, match="batch_size 3 does not divide the 4"):
    llm_oneshot.prune_decoder("wanda", model, params, hf_config, CALIBRATION, 0.5,
                              mesh=ONE_DEVICE, batch_size=3)
  with pytest.raises(ValueError, match="has no whole groups of 3 input channels"):
    llm_oneshot.prune_decoder("wanda", model, params, hf_config, CALIBRATION, NMPattern(1, 3),
                              mesh=ONE_DEVICE)
