"""Config files loaded outside the command line match what --config=FILE builds."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from flax import traverse_util

from jackpot_jax import config_files
from jackpot_jax.run import setup as setup_lib, spec as spec_lib
from jackpot_jax.data import holdout, preprocessing, resolve_spec
from jackpot_jax.data.config import DatasetInfo
from jackpot_jax.data.records import ArraySplit

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "default.py"
PAPER = sorted((REPO / "configs" / "paper").glob("*.py"))
# Training images of the paper's datasets (TFDS's train splits).
TRAIN_IMAGES = {"cifar10": 50_000, "cifar100": 50_000, "imagenet2012": 1_281_167}


def test_overrides_replace_fields_and_literals_are_parsed():
  overrides = config_files.parse_overrides(
      ["search.sparsity=0.95", "data.name=npz:/x.npz", "data.mean=(0.5,)"])
  assert overrides == {"search.sparsity": 0.95, "data.name": "npz:/x.npz", "data.mean": (0.5,)}
  config = config_files.load_config(DEFAULT, overrides)
  assert config.search.sparsity == 0.95 and config.data.name == "npz:/x.npz"
  assert config_files.load_config(DEFAULT).search.sparsity == 0.9


@pytest.mark.parametrize("key", ["search.sparsty", "serach.sparsity", "search.sparsity.x"])
def test_unknown_override_field_is_refused_by_name(key):
  with pytest.raises(ValueError, match=f"unknown config field '{key}'"):
    config_files.load_config(DEFAULT, {key: 0.5})


def test_override_without_equals_sign_and_missing_file_are_refused(tmp_path):
  with pytest.raises(ValueError, match="is not key=value"):
    config_files.parse_overrides(["search.sparsity"])
  with pytest.raises(ValueError, match="does not exist"):
    config_files.load_config(tmp_path / "none.py")


def test_the_default_config_finds_its_shipped_checkpoint_from_any_directory(tmp_path,
                                                                          monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_files.load_config(REPO / "configs" / "default.py")
  assert Path(config.model.checkpoint).is_absolute()
  assert Path(config.model.checkpoint).is_file()


def test_the_llm_config_names_the_shipped_llama_and_text_from_any_directory(tmp_path,
                                                                           monkeypatch):
  monkeypatch.chdir(tmp_path)
  config = config_files.load_config("llm_tiny")
  assert config.model.checkpoint == str(REPO / "pretrained" / "llm_tiny")
  assert config.data.name == f"text:{REPO / 'pretrained' / 'llm_tiny_text'}"


# The shipped configs of image classifiers (language-model configs read text).
IMAGE_CONFIGS = [path for path in sorted((REPO / "configs").rglob("*.py"))
                 if not config_files.load_config(path).data.name.startswith(("text:", "tokens:"))]


@pytest.mark.parametrize("path", IMAGE_CONFIGS, ids=lambda path: path.stem)
def test_shipped_configs_leave_the_preprocessing_to_their_dataset(path):
  """No config sets its dataset's standard statistics or augmentation: another data.name
  on the command line then brings its own. The ViT keeps its narrower crop padding."""
  spec = resolve_spec(config_files.load_config(path).data)
  assert (spec.mean, spec.std, spec.augment, spec.channels) == (None, None, None, None)
  channels = 1 if spec.source == "fashion_mnist" else 3
  never_read = ArraySplit(np.zeros((0, 32, 32, channels), np.uint8), np.zeros(0, np.int32))
  used = preprocessing.resolve(spec, (32, 32, channels), never_read)
  assert used.statistics == used.augment_from == f"standard:{spec.source}"
  assert used.crop_padding == (2 if path.stem == "vit_fashion_mnist" else 4)


def test_a_shipped_config_is_found_by_name_from_any_directory(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  assert {"default", "vit_fashion_mnist", "paper/resnet50_imagenet_s90_e30"} <= set(
      config_files.shipped_config_names())
  assert config_files.config_path("paper/resnet50_imagenet_s90_e30") == str(
      REPO / "configs" / "paper" / "resnet50_imagenet_s90_e30.py")
  assert (config_files.load_config("default", {"search.sparsity": 0.95}).to_dict()
          == config_files.load_config(DEFAULT, {"search.sparsity": 0.95}).to_dict())


def test_a_path_is_taken_as_given_even_where_it_looks_like_a_name(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  (tmp_path / "default").write_text("")
  assert config_files.config_path("default") == "default"
  assert config_files.config_path("mine.py") == "mine.py"


def test_an_unknown_config_name_is_refused_with_the_closest_name_and_the_shipped_ones():
  with pytest.raises(ValueError) as error:
    config_files.config_path("vit_fashon_mnist")
  message = str(error.value)
  assert "did you mean 'vit_fashion_mnist'?" in message and "\n" not in message
  assert "default, fast_search, llm_tiny, paper/mobilenet_v1_imagenet_s90_e30," in message
  with pytest.raises(ValueError, match="neither a file nor a shipped config; pass a .py"):
    config_files.config_path("zzz")


def _jackpot(*args: str, cwd) -> subprocess.CompletedProcess:
  return subprocess.run([sys.executable, "-m", "jackpot_jax", *args], cwd=cwd,
                        env={"PYTHONPATH": str(REPO), "PATH": ""},
                        capture_output=True, text=True, timeout=120)


def test_the_command_line_takes_a_config_name_in_either_flag_form(tmp_path):
  """A bad override of the named config fails while that config's file is loaded: the
  error names the file the name resolved to."""
  paper = REPO / "configs" / "paper" / "resnet50_imagenet_s90_e30.py"
  for config in (["--config=paper/resnet50_imagenet_s90_e30"],
                 ["--config", "paper/resnet50_imagenet_s90_e30"]):
    done = _jackpot("search", *config, "--config.no_such_field=1", "--workdir=w", cwd=tmp_path)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [
        f"jackpot: error: unknown config field 'no_such_field' in the overrides of {paper}"]


def test_the_command_line_refuses_an_unknown_config_name_in_one_line(tmp_path):
  done = _jackpot("search", "--config=defualt", "--workdir=w", cwd=tmp_path)
  assert done.returncode == 2
  (line,) = done.stderr.strip().splitlines()
  assert line.startswith("jackpot: error: config 'defualt' is neither a file nor a shipped "
                         "config; did you mean 'default'?")


@pytest.mark.parametrize("path", PAPER, ids=lambda path: path.stem)
def test_paper_configs_search_the_whole_training_split_and_keep_the_last_step(path):
  config = config_files.load_config(path, {"model.checkpoint": "/pretrained.pth"})
  spec = spec_lib.resolve(config)
  assert config.data.holdout_images == 0 and config.eval.every_epochs == 0
  assert spec.selected_on == "last_step"
  images = TRAIN_IMAGES[config.data.name]
  assert holdout.holdout_count(spec.data.holdout_images, images) == 0
  data_info = DatasetInfo(name=config.data.name, num_classes=config.model.num_classes,
                          image_shape=(32, 32, 3), num_train=images, num_test=0, class_names=())
  setup = setup_lib.SearchSetup(spec=spec, imported=None, params=None, batch_stats=None,
                                plan=None, data_info=data_info, mesh=None)
  # 50,000 / 256: 195 whole batches an epoch, the last partial one dropped (the authors'
  # loader keeps it: 196 steps).
  assert setup.steps_per_epoch == {50_000: 195, 1_281_167: 5004}[images]
  assert setup.total_steps == config.search.num_epochs * setup.steps_per_epoch


def test_selection_defaults_to_holdout_only_where_the_search_evaluates_on_held_out_images():
  assert spec_lib.resolve(config_files.load_config(DEFAULT)).selected_on == "holdout"
  for overrides in ({"data.holdout_images": 0, "eval.every_epochs": 0.0},
                    {"eval.every_epochs": 0.0}):
    config = config_files.load_config(DEFAULT, overrides)
    assert spec_lib.resolve(config).selected_on == "last_step", overrides
  config = config_files.load_config(DEFAULT, {"search.selected_on": "last_step"})
  assert spec_lib.resolve(config).selected_on == "last_step"


def test_fast_search_is_the_default_config_with_only_its_recipe_changed():
  flat = lambda name: traverse_util.flatten_dict(config_files.load_config(name).to_dict())
  fast, default = flat("fast_search"), flat("default")
  assert {key for key in default if fast[key] != default[key]} == {
      ("search", "distill_weight"), ("search", "feature_distill_weight")}
  assert (fast["search", "distill_weight"], fast["search", "distill_temperature"],
          fast["search", "feature_distill_weight"]) == (0.5, 4.0, 1.0)
