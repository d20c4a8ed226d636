"""Shared fixtures: a tiny ResNet-20 with non-trivial weights, built once per session."""

from __future__ import annotations

import atexit
import fcntl
import functools
import json
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

# Tests run on the CPU with 8 simulated devices available for the multi-device cases;
# single-device tests use only the first.
EIGHT_CPU_DEVICES = "--xla_force_host_platform_device_count=8"
# XLA:CPU's older fusion code generator: the same programs compiled in about 30% less time
# (a cold tiny step_speed.py process, `benchmarks/xla_cpu_flags.py`), and most of the
# suite's programs take longer to compile than to run. Numbers may differ from the default
# generator's in the last bit; every process of the session uses it, so the runs a test
# compares bit for bit compile alike (a test comparing two different programs bit for bit
# is marked `default_codegen`).
FAST_COMPILE = "--xla_cpu_use_fusion_emitters=false"
os.environ.setdefault("XLA_FLAGS", f"{EIGHT_CPU_DEVICES} {FAST_COMPILE}")


def _without_device_count(xla_flags: str) -> str:
  return re.sub(r"--xla_force_host_platform_device_count=\S*", "", xla_flags).strip()


# The XLA_FLAGS of the commands the tests start: the session's, on one device.
CHILD_XLA_FLAGS = _without_device_count(os.environ["XLA_FLAGS"])
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
# Half of the suite's time was XLA compiling: the tests (and the commands they start, which
# inherit this) compile without LLVM's expensive optimizations, as JAX offers for programs
# that run less than they compile. The same programs; float reductions may round
# differently in the last bit. Set it to 0 to test the fully optimised programs.
os.environ.setdefault("JAX_DISABLE_MOST_OPTIMIZATIONS", "1")


def _share_compiled_programs_across_the_session() -> None:
  """Every process of the session (both xdist workers and the commands the tests start)
  reads and writes JAX's persistent compilation cache in one temporary folder: most of the
  suite's time was XLA compiling the same small programs again in each test and each child
  process. One folder, because JAX's cache keys depend on the folder's path. The processes
  that share programs write entries whole (`run/compilation_cache.py`: this one below, and
  every command, experiment and benchmark through `entrypoint.run`); the few test scripts
  that do not (scripts/collective_deadlock.py) compile programs no other process runs.
  All programs are cached (no minimum compile time): the eager per-layer ops are hundreds
  of small compiles. A folder the caller names in $JAX_COMPILATION_CACHE_DIR is used as it
  is and kept."""
  if "JAX_COMPILATION_CACHE_DIR" in os.environ:
    return
  folder = tempfile.mkdtemp(prefix="jackpot-jax-tests-compile-cache-")
  atexit.register(shutil.rmtree, folder, ignore_errors=True)
  os.environ["JAX_COMPILATION_CACHE_DIR"] = folder
  os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0")


_share_compiled_programs_across_the_session()

from pathlib import Path

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import traverse_util

from jackpot_jax import models
from jackpot_jax.run import setup as setup_lib, spec as spec_lib, job
from jackpot_jax.search import optim, scores as scores_lib, sparsity, steps
from jackpot_jax.run import compilation_cache, program_memory
from torch_reference.tiny_job import TINY_DEPTH, TINY_MODEL, write_tiny_job
from torch_reference.tiny_job import tiny_config  # noqa: F401 (the tests import it from here)

# This process's entries too are written whole, so the commands its tests start (which
# may be killed, or run two at a time) share its folder.
compilation_cache.write_entries_atomically()


TINY_CHECKPOINT = f"{TINY_MODEL}.pth"


def sgd_config(**overrides) -> ml_collections.ConfigDict:
  values = dict(optimizer="sgd", learning_rate=0.1, lr_schedule="cosine", momentum=0.9,
                nesterov=False, weight_decay=5e-4)
  values.update(overrides)
  return ml_collections.ConfigDict(values)


class TinySearch:
  """A ResNet-8 (`TINY_MODEL`) on 8x8x3 inputs, 90% l1 plan, magnitude scores and a jitted
  step."""

  def __init__(self, bn_mode: str = "recalibrate", score_init: str = "magnitude",
               optimizer_config=None, target: float = 0.9):
    self.spec = models.get_model_spec(TINY_MODEL)
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


def assert_refused_in_one_line(run, workdir: Path, capsys, message: str) -> None:
  """`run()` (a command's job writing into `workdir`) ends as the command line would: one
  line on stderr matching `message`, exit status 2, and no report or config written."""
  from jackpot_jax import errors  # pylint: disable=import-outside-toplevel
  with pytest.raises(SystemExit) as exit_:
    with errors.exit_on_user_error("jackpot"):
      run()
  lines = capsys.readouterr().err.strip().splitlines()
  assert exit_.value.code == 2 and len(lines) == 1 and re.search(message, lines[0]), lines
  assert not (workdir / "report.json").exists() and not (workdir / "config.json").exists()


def random_kernel_masks(params, seed: int = 0):
  """A random bool mask (about half kept) for every kernel of a params tree."""
  rng = np.random.default_rng(seed)
  flat = traverse_util.flatten_dict(params)
  return traverse_util.unflatten_dict({path: rng.random(leaf.shape) < 0.5
                                       for path, leaf in flat.items() if path[-1] == "kernel"})


@pytest.fixture(scope="session")
def fashion_mnist_dir(tmp_path_factory) -> Path:
  """Real Fashion-MNIST prepared offline from Debian's files: the TFDS data directory
  `launch/setup.sh --with-fashion-mnist` prepared it in ($TFDS_DATA_DIR, else
  ~/tensorflow_datasets), read only; else prepared once per session (the first worker to
  ask prepares it; the others wait on a lock).

  Prepared in a child process: preparation is the one step that uses TensorFlow, and the
  test process stays as free of it as the search processes it stands for.
  $JACKPOT_TEST_TFDS_DIR names a directory to prepare in (once) instead, so repeated runs
  (scripts/stress.sh) skip the preparation.
  """
  default = Path(os.environ.get("TFDS_DATA_DIR") or Path.home() / "tensorflow_datasets")
  if not os.environ.get("JACKPOT_TEST_TFDS_DIR") and all(
      list(default.glob(f"fashion_mnist/*/fashion_mnist-{split}.array_record-*"))
      for split in ("train", "test")):
    return default

  def prepare(data_dir) -> None:
    subprocess.run([sys.executable, "-m", "jackpot_jax.data.prepare", f"--data_dir={data_dir}"],
                   check=True, capture_output=True, cwd=REPO)

  if os.environ.get("JACKPOT_TEST_TFDS_DIR"):
    data_dir = Path(os.environ["JACKPOT_TEST_TFDS_DIR"])
    prepare(data_dir)
    return data_dir
  # The session's folder, which its xdist workers share: the first to ask prepares it.
  root = tmp_path_factory.getbasetemp()
  root = root.parent if os.environ.get("PYTEST_XDIST_WORKER") else root
  data_dir, prepared = root / "tfds", root / "tfds.prepared"
  with open(root / "tfds.lock", "w") as lock:
    fcntl.flock(lock, fcntl.LOCK_EX)
    if not prepared.exists():
      prepare(data_dir)
      prepared.touch()
  return data_dir


# How long a thread a test started may take to finish after the test: a closed input
# iterator's producer notices within 0.1 s, a finished save at once.
_THREAD_GRACE_SECONDS = 30.0


def _process_wide_threads() -> set[threading.Thread]:
  """Threads meant to live as long as the process: the pool Grain's first multiprocess
  input pipeline starts to free shared-memory batches, which every later one shares."""
  # pylint: disable=import-outside-toplevel,protected-access
  from grain._src.python.ipc import shared_memory_array
  deleter = shared_memory_array.SharedMemoryArray._del_thread_pool
  if deleter is None:
    return set()
  return {*deleter._pool, deleter._worker_handler, deleter._task_handler,
          deleter._result_handler}


@pytest.fixture(autouse=True)
def no_thread_outlives_its_test():
  """Fails a test that leaves a Python thread running (input producers, checkpoint
  savers): every way out of a search must close what it opened."""
  before = set(threading.enumerate())
  yield
  before |= _process_wide_threads()
  deadline = time.monotonic() + _THREAD_GRACE_SECONDS
  # A thread Python did not start (a TensorStore or XLA worker that logs) shows up as a
  # dummy the first time it runs Python: it cannot be joined, and it is not ours to close.
  foreign = threading._DummyThread  # pylint: disable=protected-access
  started_here = {thread for thread in set(threading.enumerate()) - before
                  if not isinstance(thread, foreign)}
  for thread in started_here:
    while True:
      try:
        thread.join(max(deadline - time.monotonic(), 0.0))
        break
      except RuntimeError:  # being started this very moment: not yet joinable
        if time.monotonic() > deadline:
          break
        time.sleep(0.01)
  left = sorted(t.name for t in started_here if t.is_alive())
  assert not left, f"threads still running after the test: {left}"


# Set in the child pytest an `eight_devices` or `default_codegen` test runs in, so a child
# that still lacks what it needs fails instead of starting another.
_CHILD_PYTEST = "JACKPOT_TEST_CHILD_PYTEST"


FILE_SECONDS = Path(__file__).with_name("file_seconds.json")


def pytest_configure(config):
  # Files are handed to the workers in the order `pytest_collection_modifyitems` sets, not
  # xdist's own (most tests first, which left the one-test whole-job files for the end).
  if hasattr(config.option, "loadscopereorder"):
    config.option.loadscopereorder = False
  config.addinivalue_line(
      "markers", "eight_devices: needs 8 devices; where this process has fewer, the test runs "
      "in a child pytest on 8 simulated CPU devices")
  config.addinivalue_line(
      "markers", "default_codegen: compares two different programs bit for bit, which XLA's "
      "default fusion code generator keeps equal and FAST_COMPILE's need not; where the "
      "session compiles with FAST_COMPILE, the test runs in a child pytest without it")
  config.addinivalue_line(
      "markers", "optimized_programs: compiles with all of XLA's optimizations, it and the "
      "commands it starts: the test spends its time running its programs, not compiling them")


def pytest_collection_modifyitems(config, items):
  """The longest test files first (`file_seconds.json`: each file's seconds in a measured
  run; `bash benchmarks/suite_time.sh --record` measures them again; a file not listed
  counts as the median): the workers take whole files in this order, so the session ends
  on short files, not with one worker idle while the other runs a minute-long one. The
  order within a file is kept."""
  del config
  seconds = json.loads(FILE_SECONDS.read_text())
  typical = statistics.median(seconds.values())
  first_seen: dict[str, int] = {}
  for item in items:
    first_seen.setdefault(item.location[0], len(first_seen))
  items.sort(key=lambda item: (-seconds.get(item.location[0], typical),
                               first_seen[item.location[0]]))


@pytest.fixture(autouse=True)
def optimized_where_marked(request, monkeypatch):
  """Lifts JAX_DISABLE_MOST_OPTIMIZATIONS for an `optimized_programs` test."""
  if request.node.get_closest_marker("optimized_programs") is None:
    yield
    return
  before = jax.config.read("jax_disable_most_optimizations")
  monkeypatch.setenv("JAX_DISABLE_MOST_OPTIMIZATIONS", "0")
  jax.config.update("jax_disable_most_optimizations", False)
  try:
    yield
  finally:
    jax.config.update("jax_disable_most_optimizations", before)


@pytest.hookimpl(tryfirst=True)
def pytest_pyfunc_call(pyfuncitem):
  """Runs a test in a child pytest where this process cannot: an `eight_devices` test where
  JAX has fewer than 8 devices (on 8 simulated CPU devices), a `default_codegen` test where
  this session compiles with `FAST_COMPILE` (without it). JAX fixes its devices and XLA its
  flags when they start, so a session whose XLA_FLAGS were set otherwise beforehand, or one
  on a single GPU, still runs the test rather than skipping it. The test passes when the
  child reports it passed."""
  flags = os.environ.get("XLA_FLAGS", "")
  devices = (pyfuncitem.get_closest_marker("eight_devices") is not None
             and jax.device_count() < 8)
  codegen = (pyfuncitem.get_closest_marker("default_codegen") is not None
             and FAST_COMPILE in flags.split())
  if not (devices or codegen):
    return None
  if os.environ.get(_CHILD_PYTEST):
    raise AssertionError(f"the child pytest still has {jax.device_count()} device(s) and "
                         f"XLA_FLAGS={flags!r}")
  if devices:
    flags = f"{_without_device_count(flags)} {EIGHT_CPU_DEVICES}"
  if codegen:
    flags = " ".join(flag for flag in flags.split() if flag != FAST_COMPILE)
  env = dict(os.environ, XLA_FLAGS=" ".join(flags.split()), JAX_PLATFORMS="cpu",
             **{_CHILD_PYTEST: "1"})
  child = subprocess.run(
      [sys.executable, "-m", "pytest", "-p", "no:cacheprovider", "-n", "0", pyfuncitem.nodeid],
      cwd=pyfuncitem.config.rootpath, env=env, capture_output=True, text=True, timeout=1800)
  if child.returncode != 0 or not re.search(r"\b1 passed\b", child.stdout):
    pytest.fail(f"with XLA_FLAGS={env['XLA_FLAGS']!r}:\n{child.stdout[-6000:]}"
                f"{child.stderr[-3000:]}", pytrace=False)
  return True


@pytest.fixture(autouse=True)
def compiled_programs_released_before_the_mapping_limit():
  """Drops the compiled programs this process keeps after a test once it holds half of
  Linux's vm.max_map_count memory mappings (`run/program_memory.py`). Kept for the whole
  session they reached the limit (65,530) at about the 250th test, where the next
  compile's mmap failed and XLA crashed with a segfault. Below half the limit the programs
  stay, so the next test that runs the same ones does not trace and load them again."""
  yield
  program_memory.release_if_crowded()


@pytest.fixture(scope="session")
def tiny_search() -> TinySearch:
  return TinySearch()


@pytest.fixture(scope="session")
def tiny_job(tmp_path_factory):
  """Random ResNet-8 (`TINY_CHECKPOINT`) and ResNet-20 checkpoints (1 input channel) and a
  10-class 8x8 npz dataset: 80 training images, of which `tiny_config` holds 16 out."""
  return write_tiny_job(tmp_path_factory.mktemp("job"), (TINY_DEPTH, 20))


def tiny_overrides(root: Path) -> list[str]:
  """Command-line flags that make configs/default.py compute what `tiny_config` does."""
  return [f"--config.model.name={TINY_MODEL}",
          f"--config.model.checkpoint={root / TINY_CHECKPOINT}",
          f"--config.data.name=npz:{root / 'data.npz'}", "--config.data.mean=(0.5,)",
          "--config.data.std=(0.25,)", "--config.data.holdout_images=16",
          "--config.search.sparsity_plan=uniform",
          "--config.search.batch_size=16", "--config.search.num_epochs=1.5",
          "--config.eval.batch_size=8", "--config.checkpoint.every_steps=2",
          "--config.progress_bar=False"]


def setup_of(config: ml_collections.ConfigDict) -> setup_lib.SearchSetup:
  """The set-up a search of `config` starts from."""
  return setup_lib.setup_search(spec_lib.resolve(config))


def final_search_state(config, workdir) -> steps.SearchState:
  """The latest search checkpoint of a workdir, on the host."""
  setup = setup_of(config)
  state, _ = job.restore_search_state(setup, Path(workdir))
  return jax.device_get(state)
