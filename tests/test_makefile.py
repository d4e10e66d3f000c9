"""The Makefile's two commands: what `make setup` installs and says, and how `make toy` launches train.py."""

import os
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(shutil.which("make") is None, reason="needs make")

# A stand-in for python: logs its arguments, answers the Makefile's checks as told by the environment.
FAKE_PYTHON = """#!/bin/sh
echo "$*" >> "$FAKE_LOG"
case "$*" in
  "-c import torch") exit "$HAS_TORCH";;
  *m.distribution*) exit "$HAS_VDL";;
esac
exit 0
"""


def make(*args, env=None):
    environment = {k: v for k, v in os.environ.items() if k not in ("TORCH", "GOMP_SPINCOUNT", "MAKEFLAGS")}
    return subprocess.run(["make", "-s", "-C", str(ROOT), *args], capture_output=True, text=True, env={**environment, **(env or {})}, check=True)


def setup_calls(tmp_path, *args, torch_installed, vdl_installed):
    python, log = tmp_path / "python", tmp_path / "calls.log"
    python.write_text(FAKE_PYTHON)
    python.chmod(0o755)
    log.unlink(missing_ok=True)
    env = {"FAKE_LOG": str(log), "HAS_TORCH": "0" if torch_installed else "1", "HAS_VDL": "0" if vdl_installed else "1"}
    result = make("setup", f"PYTHON={python}", *args, env=env)
    return [line for line in log.read_text().splitlines() if line.startswith("-m pip")], result.stdout


def test_setup_installs_torch_only_where_none_is_unless_one_is_chosen_and_says_what_it_does(tmp_path):
    pips, said = setup_calls(tmp_path, torch_installed=False, vdl_installed=False)
    assert pips == ["-m pip install torch==2.13.0", "-m pip install -e .[dev]"]  # not -q: pip's progress shows
    assert "setup: installing torch==2.13.0" in said and "minutes the first time" in said
    pips, said = setup_calls(tmp_path, torch_installed=True, vdl_installed=True)
    assert pips == ["-m pip install -q -e .[dev]"] and "vdl-diffusion is installed" in said  # a rerun: no torch, quiet
    pips, _ = setup_calls(tmp_path, "TORCH=torch==2.12.0 --index-url https://example.invalid/cpu", torch_installed=True, vdl_installed=True)
    assert pips[0] == "-m pip install torch==2.12.0 --index-url https://example.invalid/cpu"


def test_toy_resumes_with_explicit_launch_settings_and_briefly_spinning_openmp_threads():
    command = make("-n", "toy", "ARGS=--max_train_steps 500").stdout
    assert "accelerate launch --num_processes 1 --num_machines 1 --mixed_precision no --dynamo_backend no" in command
    assert "train.py --resume_from_checkpoint latest --prior text-bank --posterior_family bank_mixture --bank_top_k 8 --e_step_at 0.5 --e_step_balance 0.5 --max_train_steps 500" in command
    assert "--prior" not in make("-n", "toy", "TOY_ARGS=", "ARGS=--max_train_steps 500").stdout  # train.py's own defaults
    show = ["--eval", "show-spin: ; @echo $$GOMP_SPINCOUNT", "show-spin"]
    assert make(*show).stdout.strip() == "1000"
    assert make(*show, env={"GOMP_SPINCOUNT": "20"}).stdout.strip() == "20"  # a user's own setting wins


def test_the_oldest_constraints_are_pyprojects_lower_bounds():
    """`make test-oldest` tests the lower end of the supported range only while .ci/oldest.txt pins exactly it."""
    tomllib = pytest.importorskip("tomllib")  # Python 3.11+
    from packaging.requirements import Requirement

    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    lower_bounds = {}
    for line in dependencies:
        requirement = Requirement(line)
        floors = [spec.version for spec in requirement.specifier if spec.operator == ">="]
        if floors and requirement.name != "torch":
            lower_bounds[requirement.name.replace("-", "_")] = floors[0]
    pins = {}
    for line in (ROOT / ".ci" / "oldest.txt").read_text().splitlines():
        if line and not line.startswith("#"):
            name, _, version = line.partition("==")
            pins[name.replace("-", "_")] = version.removesuffix(".*")
    assert pins == {name: ".".join(floor.split(".")[:2]) for name, floor in lower_bounds.items()}
    assert "test-oldest:" in (ROOT / "Makefile").read_text()
