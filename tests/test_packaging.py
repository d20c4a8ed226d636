"""pyproject.toml's dependency ranges and extras admit the environments our users install
into, and a wheel built from it carries the shipped configs and checkpoints."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tomllib
import zipfile
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

from jackpot_jax import config_files

REPO = Path(__file__).resolve().parents[1]

# A GPU image users run (read off one: Python 3.12.3, jax/jaxlib 0.11.2 with CUDA 13,
# torch 2.11.0 CUDA); flax, optax and orbax-checkpoint at the releases of that time.
GPU_IMAGE = {"python": "3.12.3", "jax": "0.11.2", "flax": "0.12.12", "optax": "0.2.8",
             "orbax-checkpoint": "0.12.8", "torch": "2.11.0"}
# The exact set the test suite runs on (requirements.txt).
TESTED_CPU = {"python": "3.11.7", "jax": "0.10.2", "flax": "0.12.8", "optax": "0.2.8",
              "orbax-checkpoint": "0.12.8", "torch": "2.13.0"}


def _project() -> dict:
  return tomllib.loads((REPO / "pyproject.toml").read_text())["project"]


def _ranges() -> dict[str, SpecifierSet]:
  return {Requirement(line).name.lower(): Requirement(line).specifier
          for line in _project()["dependencies"]}


def test_the_declared_ranges_admit_a_gpu_image_and_the_tested_cpu_set():
  ranges = _ranges()
  for environment in (GPU_IMAGE, TESTED_CPU):
    assert SpecifierSet(_project()["requires-python"]).contains(environment["python"])
    for name, version in environment.items():
      if name != "python":
        assert ranges[name].contains(version), (name, version, str(ranges[name]))


def test_requirements_pin_what_the_ranges_admit():
  ranges = _ranges()
  for line in (REPO / "requirements.txt").read_text().splitlines():
    line = line.split("#")[0].strip()
    if "==" not in line:
      continue
    pinned = Requirement(line)
    if pinned.name.lower() in ranges:
      version = str(pinned.specifier).removeprefix("==")
      assert ranges[pinned.name.lower()].contains(version), line


def _requirements_txt() -> dict[str, Requirement]:
  """requirements.txt's lines, {name: requirement}."""
  lines = (line.split("#")[0].strip()
           for line in (REPO / "requirements.txt").read_text().splitlines())
  return {Requirement(line).name.lower(): Requirement(line) for line in lines if line}


def _extras() -> dict[str, list[Requirement]]:
  return {name: [Requirement(line) for line in lines]
          for name, lines in _project()["optional-dependencies"].items()}


def test_extras_choose_jax_for_each_accelerator_within_the_declared_range():
  extras = _extras()
  assert set(extras) == {"cpu", "cuda12", "cuda13", "tpu", "prepare", "test"}
  for accelerator in ("cpu", "cuda12", "cuda13", "tpu"):
    (jax,) = extras[accelerator]
    assert (jax.name, jax.extras, jax.specifier) == ("jax", {accelerator}, _ranges()["jax"])


def test_no_extra_pulls_in_a_torch_build():
  """Which torch build (CPU or CUDA) is installed is the user's choice of index: an extra
  naming torch would let pip replace the CPU build requirements.txt installs."""
  for name, requirements in _extras().items():
    assert all(r.name.lower() != "torch" for r in requirements), name


def test_requirements_install_and_pin_within_range_what_the_cpu_prepare_and_test_extras_need():
  tested = _requirements_txt()
  extras = _extras()
  for extra in ("cpu", "prepare", "test"):
    for requirement in extras[extra]:
      name = requirement.name.lower()
      if name == "jackpot_jax" or not (requirement.marker is None
                                       or requirement.marker.evaluate({"extra": extra})):
        continue
      assert name in tested, (extra, str(requirement))
      pinned = str(tested[name].specifier)
      if pinned.startswith("=="):
        assert requirement.specifier.contains(pinned.removeprefix("==")), (extra, str(requirement))


# Run with the installed package only (cwd and PYTHONPATH: the install): the default config
# by name, its checkpoint, a paper config, and the tiny Llama's folder.
_INSTALLED_SNIPPET = """
import json, os
import jackpot_jax
from jackpot_jax import config_files, entrypoint
config = config_files.load_config("default")
print(json.dumps({"package": jackpot_jax.__file__, "default": entrypoint.DEFAULT_CONFIG,
                  "checkpoint": config.model.checkpoint,
                  "checkpoint_exists": os.path.isfile(config.model.checkpoint),
                  "paper": config_files.config_path("paper/resnet50_imagenet_s90_e30"),
                  "llm": config_files.load_config("llm_tiny").model.checkpoint}))
"""


def test_the_wheel_ships_configs_and_checkpoints_and_a_named_config_resolves_after_install(
    tmp_path):
  # Built from a copy, so the build leaves nothing (build/, egg-info) in the checkout.
  source = tmp_path / "source"
  source.mkdir()
  for name in ("pyproject.toml", "README.md"):
    shutil.copy(REPO / name, source / name)
  for name in ("jackpot_jax", "configs", "pretrained"):
    shutil.copytree(REPO / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
  subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "--no-build-isolation",
                  str(source), "-w", str(tmp_path / "dist")],
                 check=True, capture_output=True, cwd=tmp_path, timeout=300)
  (wheel,) = (tmp_path / "dist").glob("jackpot_jax-*.whl")

  names = set(zipfile.ZipFile(wheel).namelist())
  assert {f"jackpot_jax/configs/{name}.py" for name in config_files.shipped_config_names()} <= names
  assets = [*(REPO / "pretrained").glob("*.pth"),
            *(path for folder in ("llm_tiny", "llm_tiny_text")
              for path in (REPO / "pretrained" / folder).rglob("*") if path.is_file())]
  assert {f"jackpot_jax/{path.relative_to(REPO).as_posix()}" for path in assets} <= names
  packages = {path.parent.relative_to(REPO).as_posix()
              for path in (REPO / "jackpot_jax").rglob("__init__.py")}
  shipped = {package for package in packages if f"{package}/__init__.py" in names}
  assert shipped == packages
  assert not any(name.startswith(("tests/", "torch_reference/")) for name in names)

  site = tmp_path / "site"
  subprocess.run([sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--target", str(site),
                  str(wheel)], check=True, capture_output=True, timeout=300)
  elsewhere = tmp_path / "elsewhere"
  elsewhere.mkdir()
  done = subprocess.run([sys.executable, "-c", _INSTALLED_SNIPPET], cwd=elsewhere,
                        env={**os.environ, "PYTHONPATH": str(site)},
                        capture_output=True, text=True, timeout=120)
  assert done.returncode == 0, done.stderr
  found = json.loads(done.stdout)
  package = site / "jackpot_jax"
  assert found == {"package": str(package / "__init__.py"),
                   "default": str(package / "configs" / "default.py"),
                   "checkpoint": str(package / "pretrained" / "resnet20_fashion_mnist.pth"),
                   "checkpoint_exists": True,
                   "paper": str(package / "configs" / "paper" / "resnet50_imagenet_s90_e30.py"),
                   "llm": str(package / "pretrained" / "llm_tiny")}


def test_pytest_rewrites_the_asserts_of_the_suites_modules_only(tmp_path, monkeypatch):
  """A module named like a test outside tests/ (TensorFlow's test_util.py, which TFDS
  imports mid-test) is imported as it is: CPython 3.11's AST conversion, which a rewrite
  runs, is not safe to run while another is under way."""
  package = tmp_path / "site_packages" / "third_party_for_rewrite_check"
  package.mkdir(parents=True)
  (package / "__init__.py").write_text("")
  (package / "test_util.py").write_text("def check():\n  assert 1 == 2\n")
  monkeypatch.syspath_prepend(str(package.parent))
  try:
    from third_party_for_rewrite_check import test_util
    assert type(test_util.__loader__).__name__ != "AssertionRewritingHook"
  finally:
    for name in [n for n in sys.modules if n.startswith("third_party_for_rewrite_check")]:
      del sys.modules[name]
  assert type(sys.modules[__name__].__loader__).__name__ == "AssertionRewritingHook"
