"""Config files loaded outside the command line match what --config=FILE builds."""

from __future__ import annotations

from pathlib import Path

import pytest

from jackpot_jax import config_files, run_setup, run_spec
from jackpot_jax.data import holdout
from jackpot_jax.data.config import DatasetInfo

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


@pytest.mark.parametrize("path", PAPER, ids=lambda path: path.stem)
def test_paper_configs_search_the_whole_training_split_and_keep_the_last_step(path):
  config = config_files.load_config(path, {"model.checkpoint": "/pretrained.pth"})
  spec = run_spec.resolve(config)
  assert config.data.holdout_images == 0 and config.eval.every_epochs == 0
  assert spec.selected_on == "last_step"
  images = TRAIN_IMAGES[config.data.name]
  assert holdout.holdout_count(spec.data.holdout_images, images) == 0
  data_info = DatasetInfo(name=config.data.name, num_classes=config.model.num_classes,
                          image_shape=(32, 32, 3), num_train=images, num_test=0, class_names=())
  setup = run_setup.SearchSetup(spec=spec, imported=None, params=None, batch_stats=None,
                                plan=None, data_info=data_info, mesh=None)
  # 50,000 / 256: 195 whole batches an epoch, the last partial one dropped (the authors'
  # loader keeps it: 196 steps).
  assert setup.steps_per_epoch == {50_000: 195, 1_281_167: 5004}[images]
  assert setup.total_steps == config.search.num_epochs * setup.steps_per_epoch


def test_selection_defaults_to_holdout_only_where_the_search_evaluates_on_held_out_images():
  assert run_spec.resolve(config_files.load_config(DEFAULT)).selected_on == "holdout"
  for overrides in ({"data.holdout_images": 0, "eval.every_epochs": 0.0},
                    {"eval.every_epochs": 0.0}):
    config = config_files.load_config(DEFAULT, overrides)
    assert run_spec.resolve(config).selected_on == "last_step", overrides
  config = config_files.load_config(DEFAULT, {"search.selected_on": "last_step"})
  assert run_spec.resolve(config).selected_on == "last_step"
