"""Config files loaded outside the command line match what --config=FILE builds."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from jackpot_jax import config_files
from jackpot_jax.data import preprocessing, resolve_spec
from jackpot_jax.data.records import ArraySplit

REPO = Path(__file__).resolve().parents[1]
DEFAULT = REPO / "configs" / "default.py"


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


@pytest.mark.parametrize("path", sorted((REPO / "configs").rglob("*.py")),
                         ids=lambda path: path.stem)
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
