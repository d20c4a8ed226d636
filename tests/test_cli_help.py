"""`jackpot --help` and `jackpot COMMAND --help` say what to type; misspelt commands,
config fields and model names get the closest valid name."""

from __future__ import annotations

import subprocess
import sys

import pytest

from jackpot_jax import cli, config_defaults, config_files
from jackpot_jax.models import registry

from conftest import REPO


def _help(capsys, *args: str) -> str:
  with pytest.raises(SystemExit) as exited:
    cli._flags_parser(["jackpot", *args])
  assert exited.value.code == 0
  return capsys.readouterr().out


def test_top_level_help_lists_the_commands_the_common_fields_and_an_example(capsys):
  text = _help(capsys, "--help")
  for command in cli.COMMANDS:
    assert f"  {command} " in text
  assert "--config.search.sparsity=0.9\n" in text  # the built-in default's value
  assert config_defaults.DOCS["search.sparsity"][:40] in text.replace("\n      ", " ")
  assert "example:\n  jackpot search --config=" in text


@pytest.mark.parametrize("args", [("search", "--help"), ("search", "-h"), ("help", "search")])
def test_search_help_shows_its_flags_and_the_most_used_fields(capsys, args):
  text = _help(capsys, *args)
  assert text.startswith("usage: jackpot search")
  for flag in ("--workdir", "--config=FILE|NAME", "--force", "--distributed"):
    assert f"  {flag}" in text
  assert "--config.search.num_epochs=2.0" in text and "--config.mesh.fsdp_min_size" not in text


def test_search_help_with_a_config_lists_every_field_of_that_config(capsys):
  config_file = REPO / "configs" / "vit_fashion_mnist.py"
  text = _help(capsys, "search", "--help", f"--config={config_file}")
  config = config_files.load_config(config_file)
  assert f"--config.model.name={config.model.name!r}" in text
  for key, _, _ in config_defaults.FIELDS:
    assert f"--config.{key}=" in text, key


def test_export_help_names_its_formats_and_no_config_fields(capsys):
  text = _help(capsys, "export", "--help")
  assert "--format (default state_dict)" in text and "state_dict|prune|masks" in text
  assert "--output" in text and "--config.search" not in text


def test_a_misspelt_command_is_one_line_naming_the_closest_and_exit_2():
  result = subprocess.run([sys.executable, "-m", "jackpot_jax", "serch", "--workdir=x"],
                          capture_output=True, text=True, cwd=REPO, timeout=120)
  assert result.returncode == 2 and result.stdout == ""
  assert result.stderr.strip().splitlines() == [
      "jackpot: error: unknown command 'serch' (did you mean 'search'?); commands: search, "
      "evaluate, export, apply-masks, baselines (jackpot --help)"]


def test_a_misspelt_config_field_or_model_name_gets_the_closest_valid_name():
  config = config_files.load_config(REPO / "configs" / "default.py")
  with pytest.raises(ValueError, match=r"unknown config field 'search\.sparsty' .*did you mean "
                                       r"'search\.sparsity'\?"):
    config_files.apply_overrides(config, {"search.sparsty": 0.5}, "the command line")
  with pytest.raises(ValueError, match=r"unknown model 'vit_tiny_p5' \(did you mean "
                                       r"'vit_tiny_p4'\?\)"):
    registry.get_model_spec("vit_tiny_p5")
