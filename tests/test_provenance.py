"""Run directories, checkpoints and ``deqkit --version`` say which commit and packages produced them."""

from __future__ import annotations

import json
import shutil
import subprocess
from pathlib import Path

import pytest
from safetensors import safe_open
from typer.testing import CliRunner

import deqkit
from deqkit.cli.main import app as cli
from deqkit.provenance import git_state, package_root, provenance
from deqkit.train import load_application
from deqkit.train.trainer import train

ROOT = Path(__file__).resolve().parents[1]


def head_of_checkout() -> str | None:
    """``git rev-parse HEAD`` of the checkout whose deqkit these tests import, or None outside one."""
    if shutil.which("git") is None or package_root() != ROOT:
        return None
    done = subprocess.run(["git", "rev-parse", "--show-toplevel", "HEAD"], cwd=ROOT, capture_output=True,
                          text=True, check=False)
    lines = done.stdout.split()
    if done.returncode != 0 or Path(lines[0]).resolve() != ROOT:
        return None
    return lines[1]


def test_run_directory_and_checkpoint_record_commit_versions_and_command(tmp_path):
    toy = load_application(ROOT / "examples" / "toy_deq")
    config = toy.make_config("smoke", ["train.steps=4", "train.eval_every=0", "train.ckpt_every=0"])
    result = train(toy, config, tmp_path / "run")
    block = json.loads((tmp_path / "run" / "config.json").read_text())["provenance"]
    with safe_open(str(result.checkpoint), framework="pt") as handle:
        in_checkpoint = json.loads(handle.metadata()["provenance"])
    for found in (block, in_checkpoint):
        assert found["commit"] == head_of_checkout()
        assert isinstance(found["dirty"], bool) or found["commit"] is None
        assert found["versions"]["deqkit"] == deqkit.__version__
        assert {"python", "torch", "numpy", "scipy", "safetensors"} <= set(found["versions"])
        assert found["argv"] and found["cpu_count"] >= 1 and found["torch_threads"] >= 1
        assert found["time"].endswith("+00:00") and found["platform"]


def test_version_prints_version_and_commit():
    result = CliRunner().invoke(cli, ["--version"])
    assert result.exit_code == 0
    line = result.output.strip()
    assert line.startswith(f"deqkit {deqkit.__version__}")
    head = head_of_checkout()
    if head is None:
        assert line == f"deqkit {deqkit.__version__}"
    else:
        assert f"(commit {head}" in line


def test_no_commit_outside_a_checkout_or_inside_another_repository(tmp_path):
    assert git_state(tmp_path) == {"commit": None, "dirty": None}
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    # a deqkit installed into site-packages of a project that is itself a git repository: not a checkout
    subprocess.run(["git", "init", "-q", str(tmp_path)], check=True)
    (tmp_path / "site-packages").mkdir()
    assert git_state(tmp_path / "site-packages") == {"commit": None, "dirty": None}


def test_missing_git_is_recorded_as_null(monkeypatch):
    monkeypatch.setenv("PATH", "")
    assert git_state.__wrapped__(ROOT) == {"commit": None, "dirty": None}
    monkeypatch.setattr("deqkit.provenance.git_state", lambda: {"commit": None, "dirty": None})
    assert provenance()["commit"] is None
