"""Shared fixtures: a tiny ResNet-20 with non-trivial weights, built once per session."""

from __future__ import annotations

import functools
import gc
import os
import subprocess
import sys
import threading
import time

# Tests run on the CPU with 8 simulated devices available for the multi-device cases;
# single-device tests use only the first.
os.environ.setdefault("XLA_FLAGS", "--xla_force_host_platform_device_count=8")
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
import torch

from jackpot_jax import (config_defaults, models, optim, run_setup, run_spec, scores as scores_lib,
                         sparsity, steps, train)
from jackpot_jax.torch_reference.torch_models import CifarResNet


def sgd_config(**overrides) -> ml_collections.ConfigDict:
  values = dict(optimizer="sgd", learning_rate=0.1, lr_schedule="cosine", momentum=0.9,
                nesterov=False, weight_decay=5e-4)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


class TinySearch:
  """A ResNet-20 on 8x8x3 inputs, 90% l1 plan, magnitude scores and a jitted step."""

  def __init__(self, bn_mode: str = "recalibrate", score_init: str = "magnitude",
               optimizer_config=None, target: float = 0.9):
    self.spec = models.get_model_spec("resnet20")
    self.model = self.spec.build(num_classes=10)
    rng = jax.random.PRNGKey(0)
    self.batch = {"image": jax.random.normal(jax.random.PRNGKey(1), (4, 8, 8, 3)),
                  "label": jnp.array([0, 3, 5, 9])}
    variables = self.model.init(rng, self.batch["image"], train=False)
    self.params, self.batch_stats = variables["params"], variables["batch_stats"]
    self.plan = sparsity.build_sparsity_plan(self.params, sparsity=target, spec=self.spec)
    self.keep_counts = self.plan.keep_counts()
    self.tx = optim.make_optimizer(optimizer_config or sgd_config(), 100)
    self.scores = scores_lib.init_scores(self.params, self.plan, score_init,
                                         jax.random.PRNGKey(2))
    self.state = steps.init_search_state(self.scores, self.keep_counts, self.batch_stats,
                                         self.tx)
    self.step = jax.jit(functools.partial(
        steps.search_step, model=self.model, keep_counts=self.keep_counts, tx=self.tx,
        bn_mode=bn_mode))


REPO = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory) -> Path:
  """Real Fashion-MNIST prepared offline from Debian's files, once per session.

  Prepared in a child process: preparation is the one step that uses TensorFlow, and the
  test process stays as free of it as the search processes it stands for.
  $JACKPOT_TEST_TFDS_DIR names a directory to prepare in (once) instead, so repeated runs
  (scripts/stress.sh) skip the preparation.
  """
  data_dir = os.environ.get("JACKPOT_TEST_TFDS_DIR") or tmp_path_factory.mktemp("tfds")
  subprocess.run([sys.executable, "-m", "jackpot_jax.data.prepare", f"--data_dir={data_dir}"],
                 check=True, capture_output=True, cwd=REPO)
  return data_dir


# How long a thread a test started may take to finish after the test: a closed input
# iterator's producer notices within 0.1 s, a finished save at once.
_THREAD_GRACE_SECONDS = 30.0


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test():
  """Fails a test that leaves a Python thread running (input producers, checkpoint
  savers): every way out of a search must close what it opened."""
  before = set(threading.enumerate())
  yield
  deadline = time.monotonic() + _THREAD_GRACE_SECONDS
  for thread in set(threading.enumerate()) - before:
    thread.join(max(deadline - time.monotonic(), 0.0))
  left = sorted(t.name for t in set(threading.enumerate()) - before if t.is_alive())
  assert not left, f"threads still running after the test: {left}"


@pytest.fixture(autouse=True)
def compiled_programs_released_after_each_test():
  """Drops JAX's compilation caches after every test. Each compiled XLA:CPU executable holds
  its own memory mappings, and the suite compiles hundreds (3,000-6,000 mappings per search);
  kept alive for the whole session they reached Linux's vm.max_map_count (65,530) at about
  the 250th test, where the next compile's mmap failed and XLA crashed with a segfault."""
  yield
  jax.clear_caches()
  gc.collect()


@pytest.fixture(scope="session")
def tiny_search() -> TinySearch:
  return TinySearch()


@pytest.fixture(scope="session")
def tiny_job(tmp_path_factory):
  """A random ResNet-20 checkpoint (1 input channel) and a 10-class 8x8 npz dataset: 80
  training images, of which `tiny_config` holds 16 out."""
  root = tmp_path_factory.mktemp("job")
  rng = np.random.default_rng(0)
  arrays = {"x_train": rng.integers(0, 256, (80, 8, 8, 1), dtype=np.uint8),
            "y_train": np.arange(80) % 10, "x_test": rng.integers(0, 256, (20, 8, 8, 1), dtype=np.uint8),
            "y_test": np.arange(20) % 10}
  np.savez(root / "data.npz", **arrays)
  torch.manual_seed(0)
  net = CifarResNet(20, num_classes=10, in_channels=1)
  torch.save(net.state_dict(), root / "resnet20.pth")
  return root


def tiny_config(root: Path) -> ml_collections.ConfigDict:
  """Six search steps of 16 of the 64 searched examples of `tiny_job`, evaluations on the
  16 held-out ones, checkpoints every 2 steps."""
  config = config_defaults.base_config()
  config.model.name = "resnet20"
  config.model.checkpoint = str(root / "resnet20.pth")
  config.data.name = f"npz:{root / 'data.npz'}"
  config.data.mean, config.data.std = (0.5,), (0.25,)
  config.data.holdout_images = 16
  # Torch's default init scales weights by 1/sqrt(fan_in), so a global l1 threshold on a
  # random network would empty the widest layers; trained networks do not look like that.
  config.search.sparsity_plan = "uniform"
  config.search.batch_size = 16
  config.search.num_epochs = 1.5
  config.eval.batch_size = 8
  config.checkpoint.every_steps = 2
  config.log_every_steps = 1
  config.progress_bar = False
  return config


def tiny_overrides(root: Path) -> list[str]:
  """Command-line flags that make configs/default.py compute what `tiny_config` does."""
  return [f"--config.model.checkpoint={root / 'resnet20.pth'}",
          f"--config.data.name=npz:{root / 'data.npz'}", "--config.data.mean=(0.5,)",
          "--config.data.std=(0.25,)", "--config.data.holdout_images=16",
          "--config.search.sparsity_plan=uniform",
          "--config.search.batch_size=16", "--config.search.num_epochs=1.5",
          "--config.eval.batch_size=8", "--config.checkpoint.every_steps=2",
          "--config.progress_bar=False"]


def setup_of(config: ml_collections.ConfigDict) -> run_setup.SearchSetup:
  """The set-up a search of `config` starts from."""
  return run_setup.setup_search(run_spec.resolve(config))


def final_search_state(config, workdir) -> steps.SearchState:
  """The latest search checkpoint of a workdir, on the host."""
  setup = setup_of(config)
  state, _ = train.restore_search_state(setup, Path(workdir))
  return jax.device_get(state)
