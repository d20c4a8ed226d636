"""Memory of a mask search over a Llama decoder, on paper: bytes per parameter, totals,
per device under FSDP, and the sequences per device left room for: the tables of
docs/memory.md, computed from config.json-style dicts.

  python benchmarks/memory_arithmetic.py [--seq_lens=512,2048,4096]
      [--config_json=FOLDER/config.json ...]

Per masked parameter (every decoder-block projection) the state holds the frozen weight,
a float32 score, the score optimizer's state and a bool mask; the step adds the score
gradient, the masked weight W * M (saved for the backward pass) and the new mask.
Unmasked parameters (embeddings, norms, LM head) hold the frozen weight only. FSDP
(mesh.model=N, mesh.fsdp=True) splits a leaf of at least mesh.fsdp_min_size elements
over N devices when one of its axes divides by N (`run/parallel.py`'s rule); smaller
leaves stay whole on every device. Activations are the arrays JAX saves for the backward
pass with no rematerialisation (`activation_bytes_per_sequence`).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
from pathlib import Path
from typing import Any, Mapping

GB = 1e9
SCORE_BYTES = 4  # scores are float32, the only score dtype
MASK_BYTES = 1  # SearchState.masks are bool
WEIGHT_BYTES = {"float32": 4, "bfloat16": 2}
# Optimizer state per score: optax.sgd's momentum trace, none without momentum, Adam's
# two moments; each float32 like the scores.
OPTIMIZER_BYTES = {"sgd_momentum": 4, "sgd": 0, "adam": 8}
FSDP_MIN_SIZE = 2 ** 16  # mesh.fsdp_min_size's default

MODELS = {
    "Llama-2-7B": dict(vocab_size=32000, hidden_size=4096, intermediate_size=11008,
                       num_hidden_layers=32, num_attention_heads=32, num_key_value_heads=32),
    "Llama-2-70B": dict(vocab_size=32000, hidden_size=8192, intermediate_size=28672,
                        num_hidden_layers=80, num_attention_heads=64, num_key_value_heads=8),
}


@dataclasses.dataclass(frozen=True)
class System:
  """Devices the search is sharded over (FSDP over all of them) and each one's memory."""

  name: str
  devices: int
  device_bytes: float


SYSTEMS = (System("TPU v5e-64 (64 x 16 GB)", 64, 16 * GB),
           System("8 x H100 (8 x 80 GB)", 8, 80 * GB))

# (label, weight dtype, optimizer) of each variant tabled.
VARIANTS = (("bf16 weights, SGD momentum", "bfloat16", "sgd_momentum"),
            ("bf16 weights, SGD without momentum", "bfloat16", "sgd"),
            ("bf16 weights, Adam", "bfloat16", "adam"),
            ("f32 weights, SGD momentum", "float32", "sgd_momentum"))


@dataclasses.dataclass(frozen=True)
class Leaf:
  """One parameter array: its name, shape and whether the search masks it."""

  name: str
  shape: tuple[int, ...]
  masked: bool

  @property
  def size(self) -> int:
    return math.prod(self.shape)


def llama_leaves(config: Mapping[str, Any]) -> list[Leaf]:
  """Every parameter of `models/llama.py`'s Llama with its shape; masked: the decoder
  blocks' q/k/v/o and gate/up/down projections (`llama.is_block_projection`)."""
  hidden, inter = config["hidden_size"], config["intermediate_size"]
  heads = config["num_attention_heads"]
  head_dim = config.get("head_dim") or hidden // heads
  kv_width = (config.get("num_key_value_heads") or heads) * head_dim
  vocab = config["vocab_size"]
  leaves = [Leaf("embed_tokens", (vocab, hidden), False)]
  for i in range(config["num_hidden_layers"]):
    leaves += [Leaf(f"layers_{i}/{name}", shape, masked) for name, shape, masked in (
        ("input_layernorm", (hidden,), False),
        ("q_proj", (hidden, heads * head_dim), True),
        ("k_proj", (hidden, kv_width), True),
        ("v_proj", (hidden, kv_width), True),
        ("o_proj", (heads * head_dim, hidden), True),
        ("post_attention_layernorm", (hidden,), False),
        ("gate_proj", (hidden, inter), True),
        ("up_proj", (hidden, inter), True),
        ("down_proj", (inter, hidden), True))]
  leaves.append(Leaf("norm", (hidden,), False))
  if not config.get("tie_word_embeddings", False):
    leaves.append(Leaf("lm_head", (hidden, vocab), False))
  return leaves


def bytes_per_parameter(weight_dtype: str, optimizer: str) -> dict[str, dict[str, int]]:
  """{"masked": {component: bytes}, "unmasked": {...}}: "held" components stay between
  steps, "step" ones exist while a step runs."""
  weight = WEIGHT_BYTES[weight_dtype]
  return {
      "masked": {"held: frozen weight": weight, "held: score": SCORE_BYTES,
                 "held: optimizer state": OPTIMIZER_BYTES[optimizer],
                 "held: mask": MASK_BYTES, "step: score gradient": SCORE_BYTES,
                 "step: masked weight W * M": weight, "step: new mask": MASK_BYTES},
      "unmasked": {"held: frozen weight": weight},
  }


def held_and_step(per_param: Mapping[str, int]) -> tuple[int, int]:
  """(bytes held between steps, bytes a step adds) of one parameter's components."""
  held = sum(v for k, v in per_param.items() if k.startswith("held"))
  return held, sum(per_param.values()) - held


def fsdp_divisor(shape: tuple[int, ...], devices: int, min_size: int = FSDP_MIN_SIZE) -> int:
  """How many ways FSDP splits a leaf: `parallel._fsdp_spec` shards the largest axis that
  divides by the device count, for leaves of at least `min_size` elements."""
  if devices == 1 or math.prod(shape) < min_size:
    return 1
  return devices if any(axis % devices == 0 for axis in shape) else 1


@dataclasses.dataclass(frozen=True)
class Footprint:
  """Bytes of one search set-up: over all devices, and on each under FSDP."""

  params: int
  masked_params: int
  held_bytes: int  # frozen weights + scores + optimizer state + masks
  step_bytes: int  # score gradients + W * M + new masks
  held_per_device: float
  step_per_device: float  # the step's share plus one decoder layer's W * M gathered whole


def footprint(leaves: list[Leaf], weight_dtype: str, optimizer: str, devices: int) -> Footprint:
  """The bytes of a search over `leaves`, FSDP-sharded over `devices`."""
  per_param = bytes_per_parameter(weight_dtype, optimizer)
  held = step = 0
  held_dev = step_dev = 0.0
  for leaf in leaves:
    leaf_held, leaf_step = held_and_step(per_param["masked" if leaf.masked else "unmasked"])
    divisor = fsdp_divisor(leaf.shape, devices)
    held, step = held + leaf.size * leaf_held, step + leaf.size * leaf_step
    held_dev += leaf.size * leaf_held / divisor
    step_dev += leaf.size * leaf_step / divisor
  if devices > 1:
    step_dev += gathered_layer_bytes(leaves, weight_dtype)
  return Footprint(params=sum(l.size for l in leaves),
                   masked_params=sum(l.size for l in leaves if l.masked),
                   held_bytes=held, step_bytes=step, held_per_device=held_dev,
                   step_per_device=step_dev)


def gathered_layer_bytes(leaves: list[Leaf], weight_dtype: str) -> int:
  """One decoder layer's masked weights whole: FSDP gathers a layer's W * M before its
  matmuls, so at least one layer's is whole on every device at a time."""
  return sum(l.size for l in leaves if l.masked and l.name.startswith("layers_0/")
             ) * WEIGHT_BYTES[weight_dtype]


def activation_bytes_per_sequence(config: Mapping[str, Any], seq_len: int,
                                  weight_dtype: str) -> int:
  """Bytes JAX saves for the backward pass per sequence, rematerialisation off.

  Activations follow the weights' dtype (a bytes). Per token and decoder layer:
  a * (4h + 2 kv + 6 I) (normed inputs, rotated query and key, value, attention output;
  gate, up, the SiLU's three and their product) + 8h (both norms' float32 inputs) +
  heads * seq_len * (9 + a) (the full causal attention matrix: visibility, logits and
  exponentials in float32, weights in a); per token once: 4 V (the loss's float32
  softmax). Within 3% of `jax.ad_checkpoint`'s saved residuals for a tiny Llama
  (tests/integration/test_memory_benchmark.py).
  """
  a = WEIGHT_BYTES[weight_dtype]
  hidden, inter, vocab = config["hidden_size"], config["intermediate_size"], config["vocab_size"]
  heads = config["num_attention_heads"]
  head_dim = config.get("head_dim") or hidden // heads
  kv_width = (config.get("num_key_value_heads") or heads) * head_dim
  per_layer = a * (4 * hidden + 2 * kv_width + 6 * inter) + 8 * hidden + heads * seq_len * (9 + a)
  return seq_len * (config["num_hidden_layers"] * per_layer + 4 * vocab)


def per_parameter_table(variants=VARIANTS) -> str:
  """Markdown: bytes per masked and unmasked parameter, by component, for each variant."""
  components = list(bytes_per_parameter("bfloat16", "sgd_momentum")["masked"])
  rows = ["| per parameter | " + " | ".join(label for label, _, _ in variants) + " |",
          "|---|" + "---:|" * len(variants)]
  tables = [bytes_per_parameter(dtype, optimizer) for _, dtype, optimizer in variants]
  for component in components:
    rows.append(f"| masked, {component} | " + " | ".join(
        str(t["masked"][component]) for t in tables) + " |")
  sums = [held_and_step(t["masked"]) for t in tables]
  rows.append("| **masked, held** | " + " | ".join(f"**{h}**" for h, _ in sums) + " |")
  rows.append("| **masked, held + step** | " + " | ".join(f"**{h + s}**" for h, s in sums) + " |")
  rows.append("| unmasked (embeddings, norms, LM head): frozen weight | " + " | ".join(
      str(t["unmasked"]["held: frozen weight"]) for t in tables) + " |")
  return "\n".join(rows)


def _size(value: float) -> str:
  """GB (1e9 bytes) to two decimals, below 1 GB MB to one."""
  return f"{value / GB:.2f} GB" if abs(value) >= GB else f"{value / 1e6:.1f} MB"


def model_table(name: str, config: Mapping[str, Any], seq_lens: list[int],
                systems=SYSTEMS, variants=VARIANTS) -> str:
  """Markdown: a model's totals and, per system, what each device holds and how many
  sequences of each length its activations leave room for."""
  leaves = llama_leaves(config)
  params = sum(l.size for l in leaves)
  masked = sum(l.size for l in leaves if l.masked)
  lines = [f"{name}: {params / 1e9:.4g}e9 parameters, {masked / 1e9:.4g}e9 masked "
           f"(decoder-block projections), {(params - masked) / 1e9:.4g}e9 unmasked; "
           "GB = 1e9 bytes, MB = 1e6.", ""]
  seq_heads = " | ".join(f"seqs of {s}" for s in seq_lens)
  lines += [f"| variant | held, all devices | step, all devices | system | held / device "
            f"| + step / device | left / device | {seq_heads} |",
            "|---|---:|---:|---|---:|---:|---:|" + "---:|" * len(seq_lens)]
  for label, dtype, optimizer in variants:
    for system in systems:
      fp = footprint(leaves, dtype, optimizer, system.devices)
      left = system.device_bytes - fp.held_per_device - fp.step_per_device
      fits = [max(0, math.floor(left / activation_bytes_per_sequence(config, s, dtype)))
              for s in seq_lens]
      lines.append(f"| {label} | {_size(fp.held_bytes)} | {_size(fp.step_bytes)} "
                   f"| {system.name} | {_size(fp.held_per_device)} "
                   f"| {_size(fp.step_per_device)} | {_size(left)} | "
                   + " | ".join(map(str, fits)) + " |")
  lines += ["", "| activations per sequence | " + " | ".join(f"{s} tokens" for s in seq_lens)
            + " |", "|---|" + "---:|" * len(seq_lens)]
  for dtype in dict.fromkeys(d for _, d, _ in variants):
    lines.append(f"| {dtype} | " + " | ".join(
        _size(activation_bytes_per_sequence(config, s, dtype)) for s in seq_lens) + " |")
  return "\n".join(lines)


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--seq_lens", default="512,2048,4096",
                      help="sequence lengths whose activations are tabled")
  parser.add_argument("--config_json", action="append", default=[],
                      help="a Hugging Face Llama config.json to table besides Llama-2")
  args = parser.parse_args()
  seq_lens = [int(s) for s in args.seq_lens.split(",")]
  models = dict(MODELS)
  for path in args.config_json:
    models[str(path)] = json.loads(Path(path).read_text())
  print(per_parameter_table())
  for name, config in models.items():
    print()
    print(model_table(name, config, seq_lens))


if __name__ == "__main__":
  main()
