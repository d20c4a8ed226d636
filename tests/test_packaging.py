"""pyproject.toml's dependency ranges admit the environments our users install into."""

from __future__ import annotations

import tomllib
from pathlib import Path

from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

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
