"""Bad input: one line on stderr naming the problem, exit status 2, nothing half-written.

Most cases run `cli.main` in-process (the same code path as the command, in a
fraction of the time); the ones that depend on the process (device count, file
system) run the real command in a subprocess.
"""

from __future__ import annotations

import contextlib
import dataclasses
import io
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Callable

import numpy as np
import pytest
import torch
from absl import flags
from PIL import Image

from jackpot_jax import cli, config_files
from jackpot_jax.run import evaluation, job, workdir as workdir_lib
from torch_reference.torch_models import CifarResNet

from conftest import CHILD_XLA_FLAGS, TINY_CHECKPOINT, TINY_MODEL, setup_of, tiny_config, tiny_overrides

REPO = Path(__file__).resolve().parents[2]
CONFIG = f"--config={REPO / 'configs' / 'default.py'}"


def run_in_process(args: list[str]) -> tuple[int, str]:
  """`python -m jackpot_jax ARGS` in this process: (exit status, stderr)."""
  argv = ["jackpot", *args]
  # --config.* override flags are defined while --config is parsed, from sys.argv; drop
  # the previous call's before parsing again.
  for name in [name for name in flags.FLAGS if name.startswith("config.")]:
    delattr(flags.FLAGS, name)
  flags.FLAGS.unparse_flags()
  stderr, status = io.StringIO(), 0
  saved_argv, sys.argv = sys.argv, argv
  try:
    with contextlib.redirect_stderr(stderr), contextlib.redirect_stdout(io.StringIO()):
      cli.main(cli._flags_parser(argv))
  except SystemExit as exit_:
    status = exit_.code
  finally:
    sys.argv = saved_argv
  return status, stderr.getvalue()


def run_subprocess(args: list[str], devices: int = 1, timeout: int = 240) -> tuple[int, str]:
  """The real command in a subprocess: (exit status, stderr)."""
  xla_flags = (f"{CHILD_XLA_FLAGS} --xla_force_host_platform_device_count={devices}"
               if devices > 1 else CHILD_XLA_FLAGS)
  env = dict(os.environ, XLA_FLAGS=xla_flags, TF_CPP_MIN_LOG_LEVEL="3")
  result = subprocess.run([sys.executable, "-m", "jackpot_jax", *args], cwd=REPO, env=env,
                          capture_output=True, text=True, timeout=timeout)
  return result.returncode, result.stderr


def assert_one_line_error(status: int, stderr: str, expected: str) -> None:
  """Exit 2, and the error is the last line of stderr, one line, with no traceback.

  Errors raised after the data or the checkpoint loaded may follow TensorFlow's
  start-up notices, which are not ours; errors before that are all of stderr.
  """
  lines = stderr.strip().splitlines()
  assert status == 2, stderr[-3000:]
  assert "Traceback" not in stderr, stderr[-3000:]
  errors = [line for line in lines if line.startswith("jackpot: error:")]
  assert errors == [lines[-1]], stderr[-3000:]
  assert expected in lines[-1], lines[-1]


def assert_nothing_half_written(*roots: Path) -> None:
  """No report, no config, no temporary file and no checkpoint under `roots`."""
  for root in roots:
    if not root.exists():
      continue
    names = [p.name for p in root.rglob("*")]
    leftovers = [n for n in names if n in ("report.json", "report.md", workdir_lib.CONFIG_FILE,
                                           evaluation.BASELINE_FILE, "checkpoints")
                 or n.endswith(".tmp") or ".orbax-checkpoint-tmp" in n]
    assert not leftovers, f"{root}: {leftovers}"


def _png(path: Path, value: int) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  Image.fromarray(np.full((8, 8), value, np.uint8)).save(path)


@pytest.fixture(scope="module")
def inputs(tiny_job, tmp_path_factory) -> Path:
  """Damaged and mismatched inputs beside the tiny job's good ones."""
  root = tmp_path_factory.mktemp("bad_inputs")
  good = (tiny_job / TINY_CHECKPOINT).read_bytes()
  (root / "truncated.pth").write_bytes(good[:len(good) // 2])
  (root / "empty.pth").write_bytes(b"")
  (root / "notes.pth").write_text("these are not the weights you are looking for\n")
  torch.manual_seed(0)
  torch.save(CifarResNet(32, num_classes=10, in_channels=1).state_dict(), root / "resnet32.pth")
  (root / "no_images" / "train" / "cat").mkdir(parents=True)
  (root / "no_images" / "test" / "cat").mkdir(parents=True)
  for split, classes in (("train", ("cat", "dog")), ("test", ("cat", "cow"))):
    for index, name in enumerate(classes):
      _png(root / "other_classes" / split / name / "0.png", 40 * index)
  for split, count in (("train", 2), ("test", 1)):  # Fashion-MNIST's 10 classes, in colour
    for label in range(10):
      for index in range(count):
        (root / "rgb" / split / str(label)).mkdir(parents=True, exist_ok=True)
        Image.new("RGB", (40, 40), (20 * label, 100, 200)).save(
            root / "rgb" / split / str(label) / f"{index}.png")
  np.savez(root / "no_labels.npz", x_train=np.zeros((4, 8, 8, 1), np.uint8))
  (root / "a_file").write_text("a regular file, not a directory\n")
  (root / "hf_without_config").mkdir()
  (root / "hf_without_config" / "model.safetensors").write_bytes(b"")
  for name, model_type in (("hf_bert", "bert"), ("hf_vit", "vit")):
    (root / name).mkdir()
    (root / name / "config.json").write_text(json.dumps({"model_type": model_type}))
  return root


# The command's arguments, built from (job, inputs, workdir).
Args = Callable[[Path, Path, Path], list[str]]


@dataclasses.dataclass(frozen=True)
class Case:
  """One bad input, the command that gets it, and a stable part of the error."""

  name: str
  args: Args
  expected: str
  prepare: Callable[[Path, Path], None] | None = None  # (job, workdir), before the run


def _with_overrides(job: Path, extra: list[str]) -> list[str]:
  # An override given twice would not replace the first: tuple overrides accumulate.
  names = {flag.split("=", 1)[0] for flag in extra}
  return [f for f in tiny_overrides(job) if f.split("=", 1)[0] not in names] + extra


def _search(*extra: str) -> Args:
  return lambda job, inputs, workdir: ["search", CONFIG, f"--workdir={workdir}",
                                       *_with_overrides(job, list(extra))]


def _search_with(make: Callable[[Path, Path], list[str]]) -> Args:
  return lambda job, inputs, workdir: ["search", CONFIG, f"--workdir={workdir}",
                                       *_with_overrides(job, make(inputs, workdir))]


def _pattern_search(pattern: str) -> Args:
  """A search with an N:M pattern and otherwise the tiny overrides but their plan."""
  return lambda job, inputs, workdir: [
      "search", CONFIG, f"--workdir={workdir}", f"--config.search.pattern={pattern}",
      *[f for f in tiny_overrides(job) if not f.startswith("--config.search.sparsity_plan=")]]


def _saved_run(job: Path, workdir: Path) -> None:
  """A workdir whose run was `search` with the tiny overrides (its config is enough)."""
  config = config_files.load_config(REPO / "configs" / "default.py")
  config.model.name, config.model.checkpoint = TINY_MODEL, str(job / TINY_CHECKPOINT)
  config.data.name = f"npz:{job / 'data.npz'}"
  config.data.mean, config.data.std = (0.5,), (0.25,)
  config.data.holdout_images = 16
  config.search.sparsity_plan = "uniform"
  config.search.batch_size, config.search.num_epochs = 16, 1.5
  config.eval.batch_size, config.checkpoint.every_steps = 8, 2
  config.progress_bar = False
  workdir.mkdir(parents=True)
  workdir_lib.save_workdir_config(config, workdir)


IN_PROCESS = [
    Case("sparsity_above_range", _search("--config.search.sparsity=1.5"),
         "search.sparsity must be in [0, 1), got 1.5"),
    Case("sparsity_below_range", _search("--config.search.sparsity=-0.1"),
         "search.sparsity must be in [0, 1), got -0.1"),
    Case("plan_empties_a_layer",
         _search("--config.search.sparsity=0.99", "--config.search.sparsity_plan=l1"),
         "with no kept weight"),
    Case("plan_masks_nothing", _search("--config.search.sparsity=0.0"),
         "prunes no weight of any layer"),
    Case("unknown_pattern", _search("--config.search.pattern=4:4"),
         "search.pattern must be 'unstructured' or N:M"),
    Case("pattern_with_a_sparsity",
         _search("--config.search.pattern=2:4", "--config.search.sparsity=0.95"),
         "was given with search.pattern=2:4, which implies every layer's sparsity"),
    Case("pattern_fitting_no_layer", _pattern_search("1:7"), "fits no layer the plan masks"),
    Case("unknown_model", _search("--config.model.name=resnet99"), "unknown model 'resnet99'"),
    Case("unknown_dataset", _search("--config.data.name=cifar11"),
         "unknown dataset name 'cifar11' (did you mean 'cifar10_1' or 'cifar10'?)"),
    Case("unknown_score_init", _search("--config.search.score_init=edge_pop"),
         "unknown search.score_init 'edge_pop' (did you mean 'edge_popup'?); choose one of "
         "magnitude, magnitude_abs, kaiming, edge_popup, random"),
    Case("unknown_sparsity_plan", _search("--config.search.sparsity_plan=ekr"),
         "unknown search.sparsity_plan 'ekr' (did you mean 'erk'?); choose one of l1, "
         "uniform, erk"),
    Case("unknown_augment", _search("--config.data.augment=imagenette"),
         "unknown data.augment 'imagenette' (did you mean 'imagenet'?); choose one of cifar, "
         "imagenet, none"),
    Case("wrong_num_classes", _search("--config.model.num_classes=100"),
         "model.num_classes=100 but dataset"),
    Case("missing_checkpoint", _search_with(lambda i, w: [
        f"--config.model.checkpoint={i / 'missing.pth'}"]), "does not exist or is not a file"),
    Case("truncated_checkpoint", _search_with(lambda i, w: [
        f"--config.model.checkpoint={i / 'truncated.pth'}"]), "is truncated"),
    Case("empty_checkpoint", _search_with(lambda i, w: [
        f"--config.model.checkpoint={i / 'empty.pth'}"]), "is empty"),
    Case("not_a_checkpoint", _search_with(lambda i, w: [
        f"--config.model.checkpoint={i / 'notes.pth'}"]),
         "is not a PyTorch (.pth/.pt/.tar) or safetensors checkpoint"),
    Case("checkpoint_of_another_architecture", _search_with(lambda i, w: [
        f"--config.model.checkpoint={i / 'resnet32.pth'}"]), f"does not fit model '{TINY_MODEL}'"),
    Case("checkpoint_folder_without_config", _search_with(lambda i, w: [
        f"--config.model.checkpoint={i / 'hf_without_config'}"]),
         "hf_without_config has no config.json"),
    Case("checkpoint_folder_of_an_unsupported_type", _search_with(lambda i, w: [
        f"--config.model.checkpoint={i / 'hf_bert'}"]),
         "config.json's model_type 'bert' is not supported; supported: deit, vit"),
    Case("checkpoint_folder_of_another_model", _search_with(lambda i, w: [
        f"--config.model.checkpoint={i / 'hf_vit'}"]),
         f"model.name='{TINY_MODEL}' but checkpoint folder"),
    Case("model_from_a_file_checkpoint", _search("--config.model.name=auto"),
         "is not a folder; set --config.model.name to its model"),
    Case("image_folder_without_images", _search_with(lambda i, w: [
        f"--config.data.name=image_folder:{i / 'no_images'}"]),
         "has no images in class subdirectories"),
    Case("image_folder_with_other_test_classes", _search_with(lambda i, w: [
        f"--config.data.name=image_folder:{i / 'other_classes'}"]),
         "train and test classes differ"),
    # configs/default.py as shipped (its 1-channel checkpoint) on RGB images.
    Case("checkpoint_for_other_channels", lambda job, inputs, workdir: [
        "search", CONFIG, f"--workdir={workdir}", f"--config.data.name=image_folder:"
        f"{inputs / 'rgb'}", "--config.search.batch_size=8", "--config.progress_bar=False"],
         "the checkpoint's first layer conv1 takes 1 input channel but the data "
         "'image_folder:"),
    Case("npz_without_labels", _search_with(lambda i, w: [
        f"--config.data.name=npz:{i / 'no_labels.npz'}"]), "lacks"),
    Case("mean_for_other_channels", _search("--config.data.mean=(0.5, 0.5, 0.5)",
                                            "--config.data.std=(0.2, 0.2, 0.2)"),
         "data.mean has 3 values but"),
    Case("batch_larger_than_dataset", _search("--config.search.batch_size=128"),
         "search.batch_size=128 exceeds the 64 training examples"),
    Case("early_stop_without_evaluations", _search("--config.eval.stop_within_dense=0.01",
                                                   "--config.eval.every_epochs=0"),
         "eval.stop_within_dense needs evaluations during the search"),
    Case("evaluations_without_a_holdout", _search("--config.data.holdout_images=0"),
         "data.holdout_images=0 holds none out"),
    Case("holdout_selection_without_a_holdout",
         _search("--config.search.selected_on=holdout", "--config.data.holdout_images=0",
                 "--config.eval.every_epochs=0"),
         "search.selected_on=holdout picks the jackpot by held-out evaluations, but "
         "data.holdout_images=0 and eval.every_epochs=0.0 make none; set both > 0, or "
         "search.selected_on=last_step"),
    Case("unknown_selection", _search("--config.search.selected_on=best"),
         "unknown search.selected_on 'best'; choose one of holdout, last_step"),
    Case("holdout_of_the_whole_training_split", _search("--config.data.holdout_images=80"),
         "data.holdout_images=80 must be in [0, 80)"),
    Case("negative_recalibration", _search("--config.eval.recalibration_images=-1"),
         "eval.recalibration_images must be >= 0"),
    Case("unknown_lr_schedule", _search("--config.search.lr_schedule=linear"),
         "unknown lr_schedule 'linear'"),
    Case("unparsable_override", _search("--config.search.sparsity=most"),
         "--config.search.sparsity=most"),
    Case("workdir_under_a_file", _search_with(lambda i, w: [
        f"--workdir={i / 'a_file' / 'run'}"]), "cannot create workdir"),
    Case("workdir_of_another_config", _search("--config.search.sparsity=0.8"),
         "holds a run with a different config (changed: search.sparsity)", prepare=_saved_run),
    Case("web_workdir", lambda job, inputs, workdir: [
        "search", CONFIG, "--workdir=https://host/run", *tiny_overrides(job)],
         "--workdir https://host/run is a https:// URL; use a local path or a gs://bucket/path"),
    Case("web_checkpoint", _search("--config.model.checkpoint=https://host/resnet20.pth"),
         "model.checkpoint https://host/resnet20.pth is a https:// URL"),
    Case("export_to_an_unsupported_store", lambda job, inputs, workdir: [
        "export", f"--workdir={workdir}", "--output=s3://bucket/jackpot.pth"],
         "--output s3://bucket/jackpot.pth is a s3:// URL", prepare=_saved_run),
    Case("compilation_cache_in_an_unsupported_store",
         _search("--config.compilation_cache_dir=s3://bucket/xla"),
         "compilation_cache_dir s3://bucket/xla is a s3:// URL"),
    Case("compilation_cache_under_a_file", _search_with(lambda i, w: [
        f"--config.compilation_cache_dir={i / 'a_file' / 'xla'}"]),
         "is not a writable folder"),
    Case("data_in_a_bucket", _search("--config.data.data_dir=gs://bucket/tfds"),
         "data.data_dir gs://bucket/tfds is in a bucket"),
    Case("search_without_workdir",
         lambda job, inputs, workdir: ["search", CONFIG, *tiny_overrides(job)],
         "--workdir is required"),
    Case("evaluate_without_a_run", lambda job, inputs, workdir: [
        "evaluate", f"--workdir={workdir}"], "holds no config.json"),
    Case("export_without_checkpoints", lambda job, inputs, workdir: [
        "export", f"--workdir={workdir}", f"--output={workdir / 'jackpot.pth'}"],
         "holds no search checkpoint", prepare=_saved_run),
    Case("export_in_unknown_format", lambda job, inputs, workdir: [
        "export", f"--workdir={workdir}", f"--output={workdir / 'jackpot.pth'}",
        "--format=onnx"], "--format"),
]


@pytest.mark.parametrize("case", IN_PROCESS, ids=lambda case: case.name)
def test_bad_input_in_process(case, tiny_job, inputs, tmp_path):
  workdir = tmp_path / "run"
  if case.prepare is not None:
    case.prepare(tiny_job, workdir)
  before = sorted(p.name for p in workdir.rglob("*")) if workdir.exists() else []
  status, stderr = run_in_process(case.args(tiny_job, inputs, workdir))
  assert_one_line_error(status, stderr, case.expected)
  if case.prepare is None:
    assert_nothing_half_written(tmp_path)
  else:  # the prepared run is left exactly as it was
    assert sorted(p.name for p in workdir.rglob("*")) == before
  assert not (workdir / "jackpot.pth").exists()


def test_a_url_workdir_never_becomes_a_local_folder(tiny_job, tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  status, stderr = run_in_process(["search", CONFIG, "--workdir=https://host/run",
                                   *tiny_overrides(tiny_job)])
  assert_one_line_error(status, stderr, "is a https:// URL")
  assert list(tmp_path.iterdir()) == []


def test_bad_value_fails_through_the_real_command_in_one_line(tiny_job, tmp_path):
  status, stderr = run_subprocess(["search", CONFIG, f"--workdir={tmp_path / 'run'}",
                                   *tiny_overrides(tiny_job), "--config.search.sparsity=1.5"])
  assert_one_line_error(status, stderr, "search.sparsity must be in [0, 1), got 1.5")
  assert stderr.strip().count("\n") == 0  # checked before anything loads
  assert not (tmp_path / "run").exists()


def test_missing_checkpoint_fails_through_the_real_command(tiny_job, tmp_path):
  status, stderr = run_subprocess(["search", CONFIG, f"--workdir={tmp_path / 'run'}",
                                   *tiny_overrides(tiny_job),
                                   f"--config.model.checkpoint={tmp_path / 'missing.pth'}"])
  assert_one_line_error(status, stderr, "does not exist or is not a file")
  assert_nothing_half_written(tmp_path)


def test_batch_size_not_divisible_by_the_devices(tiny_job, tmp_path):
  status, stderr = run_subprocess(["search", CONFIG, f"--workdir={tmp_path / 'run'}",
                                   *tiny_overrides(tiny_job), "--config.search.batch_size=12"],
                                  devices=8)
  assert_one_line_error(status, stderr, "search.batch_size=12 is not divisible by the 8 devices")
  assert_nothing_half_written(tmp_path)


def test_workdir_of_another_config_is_refused_by_the_real_command(tiny_job, tmp_path):
  workdir = tmp_path / "run"
  _saved_run(tiny_job, workdir)
  saved = (workdir / workdir_lib.CONFIG_FILE).read_bytes()
  status, stderr = run_subprocess(["search", CONFIG, f"--workdir={workdir}",
                                   *tiny_overrides(tiny_job), "--config.search.sparsity=0.8"])
  assert_one_line_error(status, stderr, "holds a run with a different config")
  assert "pass --force" in stderr
  assert (workdir / workdir_lib.CONFIG_FILE).read_bytes() == saved
  assert sorted(p.name for p in workdir.iterdir()) == [workdir_lib.CONFIG_FILE]


def test_read_only_workdir(tiny_job, tmp_path):
  """Root ignores permission bits, so the workdir is made immutable (chattr +i)."""
  workdir = tmp_path / "run"
  workdir.mkdir()
  if shutil.which("chattr") is None or subprocess.run(
      ["chattr", "+i", str(workdir)], capture_output=True).returncode != 0:
    pytest.skip("chattr +i is not available here")
  try:
    status, stderr = run_subprocess(["search", CONFIG, f"--workdir={workdir}",
                                     *tiny_overrides(tiny_job)])
  finally:
    subprocess.run(["chattr", "-i", str(workdir)], check=True)
  assert_one_line_error(status, stderr, f"workdir {workdir} is not writable")
  assert list(workdir.iterdir()) == []


@pytest.fixture
def small_disk(tmp_path):
  """A 1,600 KiB tmpfs: room for two of the tiny job's 630 KiB checkpoints, not three."""
  mount_point = tmp_path / "disk"
  mount_point.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=1600k", "tmpfs", str(mount_point)],
                    capture_output=True).returncode != 0:
    pytest.skip("cannot mount a tmpfs here (needs root)")
  yield mount_point
  if subprocess.run(["umount", str(mount_point)], capture_output=True).returncode != 0:
    subprocess.run(["umount", "--lazy", str(mount_point)], check=True)
    raise AssertionError(f"{mount_point} was still in use after the test: a file left open")


def test_disk_full_when_saving_keeps_the_last_complete_checkpoint(tiny_job, small_disk):
  workdir = small_disk / "run"
  status, stderr = run_subprocess(["search", CONFIG, f"--workdir={workdir}",
                                   *tiny_overrides(tiny_job), "--config.search.num_epochs=4"])
  assert_one_line_error(status, stderr, "no space left on the device while writing "
                                        f"{workdir / 'checkpoints'}")
  assert "complete checkpoints and files are kept" in stderr
  assert not (workdir / "report.json").exists()
  names = sorted(p.name for p in (workdir / "checkpoints").iterdir())
  assert names == ["2", "4"], names
  config = tiny_config(tiny_job)
  config.search.num_epochs = 4
  state, _ = job.restore_search_state(setup_of(config), workdir)
  assert int(state.step) == 4
