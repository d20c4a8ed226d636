"""A Hugging Face ViT checkpoint searched end to end through the ViT config, and exported."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import torch

# transformers would import TensorFlow (installed for TFDS) for its TF models: unused here.
os.environ.setdefault("USE_TF", "0")
os.environ.setdefault("USE_FLAX", "0")
import transformers  # noqa: E402  (a test requirement: never skipped)

from conftest import CHILD_XLA_FLAGS  # noqa: E402

REPO = Path(__file__).resolve().parents[2]


def _tiny_hf_vit(image_size: int) -> "transformers.ViTForImageClassification":
  """`vit_tiny_p4`'s architecture with random weights, for `image_size` inputs."""
  torch.manual_seed(0)
  config = transformers.ViTConfig(
      image_size=image_size, patch_size=4, num_channels=1, hidden_size=64,
      num_hidden_layers=6, num_attention_heads=4, intermediate_size=256,
      hidden_act="gelu", layer_norm_eps=1e-6, num_labels=10)
  return transformers.ViTForImageClassification(config).eval()


def _cli(*args):
  env = dict(os.environ, TF_CPP_MIN_LOG_LEVEL="3", XLA_FLAGS=CHILD_XLA_FLAGS)
  return subprocess.run([sys.executable, "-m", "jackpot_jax", *args], cwd=REPO, env=env,
                        capture_output=True, text=True, timeout=600)


def test_the_vit_config_searches_a_hf_checkpoint_and_exports_it_back(tiny_job, tmp_path):
  checkpoint = tmp_path / "vit.pth"
  torch.save(_tiny_hf_vit(8).state_dict(), checkpoint)
  workdir = tmp_path / "run"
  result = _cli("search", "--config=configs/vit_fashion_mnist.py", f"--workdir={workdir}",
                f"--config.model.checkpoint={checkpoint}",
                f"--config.data.name=npz:{tiny_job / 'data.npz'}", "--config.data.mean=(0.5,)",
                "--config.data.std=(0.25,)", "--config.data.holdout_images=16",
                "--config.search.sparsity=0.5", "--config.search.num_epochs=0.5",
                "--config.search.batch_size=16", "--config.eval.batch_size=16",
                "--config.progress_bar=False")
  assert result.returncode == 0, result.stderr[-2000:]
  report = json.loads((workdir / "report.json").read_text())
  per_layer = report["sparsity"]["per_layer"]
  linear = [name for name in per_layer if name.startswith("vit.encoder.")]
  assert len(linear) == 6 * 6  # query, key, value, attention output, two MLP layers
  assert abs(report["sparsity"]["linear"] - 0.5) < 1e-3  # the l1 plan's exact count
  assert per_layer["vit.embeddings.patch_embeddings.projection"] == 0.0
  assert per_layer["classifier"] == 0.0 and report["sparsity"]["conv"] == 0.0
  assert report["accuracy"]["magnitude_recalibrated"] is None  # LayerNorm: no statistics
  assert report["accuracy"]["jackpot"] is not None

  exported = tmp_path / "jackpot.pth"
  result = _cli("export", f"--workdir={workdir}", f"--output={exported}")
  assert result.returncode == 0, result.stderr[-2000:]
  state_dict = torch.load(exported, weights_only=True)
  net = _tiny_hf_vit(8)
  net.load_state_dict(state_dict, strict=True)
  zeros = sum(int((m.weight == 0).sum()) for name, m in net.named_modules()
              if isinstance(m, torch.nn.Linear) and name.startswith("vit.encoder."))
  total = sum(m.weight.numel() for name, m in net.named_modules()
              if isinstance(m, torch.nn.Linear) and name.startswith("vit.encoder."))
  assert abs(zeros / total - report["sparsity"]["linear"]) < 1e-4
  assert int((net.vit.embeddings.position_embeddings == 0).sum()) == 0  # never masked
