"""A short search on real Fashion-MNIST, from the shipped pre-trained ResNet-20."""

from __future__ import annotations

from pathlib import Path

import pytest

from jackpot_jax import config_files
from jackpot_jax.run import job


REPO = Path(__file__).resolve().parents[2]


@pytest.mark.optimized_programs
def test_short_search_beats_the_magnitude_pruned_mask(fashion_mnist_dir, tmp_path):
  config = config_files.load_config(REPO / "configs" / "default.py")
  config.model.checkpoint = str(REPO / "pretrained" / "resnet20_fashion_mnist.pth")
  config.data.data_dir = str(fashion_mnist_dir)
  # 20 steps of 128 of the 59,000 images not held out: the jackpot is then near 60% against
  # the magnitude mask's 10% (89% after 40 steps); the margin asserted is one point.
  config.data.holdout_images = 1_000
  config.search.num_epochs = 20 / ((60_000 - 1_000) // 128)
  config.eval.every_epochs = 0.0
  # The start and the end evaluated on 1,000 held-out images, not 5,000, four accuracies on
  # the first 500 test images, not 10,000, and BN statistics re-estimated on 512 training
  # images, not 2,048: each is a whole pass of the network, and the margins below (tens of
  # points) hold on either.
  config.data.eval_split = "test[:500]"
  config.eval.recalibration_images = 512
  config.progress_bar = False
  report = job.search_and_evaluate(config, tmp_path)
  accuracy = report["accuracy"]
  assert report["search"]["steps"] == 20
  assert abs(report["sparsity"]["conv"] - 0.9) < 0.001
  assert accuracy["dense"] > 0.88  # the shipped checkpoint is a real pre-trained model
  assert accuracy["jackpot"] > accuracy["magnitude"] + 0.01, accuracy
  # Stale BN statistics are most of what ails the 90% magnitude mask.
  assert accuracy["magnitude_recalibrated"] > accuracy["magnitude"] + 0.2, accuracy
