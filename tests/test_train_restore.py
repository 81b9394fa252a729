"""A checkpoint is data: opening one never imports code that its metadata names (docs/run_directory.md).

Each case crafts a checkpoint whose ``app``/``app_path`` metadata points at a folder whose import writes a
marker file, then runs ``deqkit eval`` and ``deqkit diagnose`` on it; the marker must never appear.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
from safetensors import safe_open
from safetensors.torch import save_file
from typer.testing import CliRunner

from deqkit.cli import app as cli
from deqkit.train.application import load_registered
from deqkit.train.errors import ApplicationError
from deqkit.train.restore import find_checkpoint_app

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "examples" / "toy_deq"
runner = CliRunner()


@pytest.fixture(scope="module")
def toy_checkpoint(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("trust") / "run"
    result = runner.invoke(cli, ["train", str(TOY), "--preset", "smoke", "--set", "train.steps=2", "--set",
                                 "train.spectral_iters=0", "--out", str(out), "-q"])
    assert result.exit_code == 0, result.output
    return out / "checkpoints" / "last.safetensors"


def payload(folder: Path, marker: Path, name: str, reexport: bool) -> Path:
    """An application folder whose import writes ``marker`` (and, if ``reexport``, defines the real toy APP
    under ``name`` so that nothing else would look wrong)."""
    folder.mkdir(parents=True)
    body = f"open({str(marker)!r}, 'w').write('imported')\n"
    if reexport:
        body += textwrap.dedent(f"""
            import dataclasses
            from deqkit.train.application import load_application
            APP = dataclasses.replace(load_application({str(TOY)!r}), name={name!r})
        """)
    (folder / "app.py").write_text(body)
    return folder


def craft(source: Path, target: Path, **meta: str) -> Path:
    """``source`` with its metadata changed (the tensors and their checksum are kept)."""
    with safe_open(str(source), framework="pt") as handle:
        tensors = {k: handle.get_tensor(k) for k in handle.keys()}
        metadata = dict(handle.metadata())
    metadata.update(meta)
    save_file(tensors, str(target), metadata=metadata)
    return target


CASES = {
    # name stored in the file, app_path stored in the file (relative to the working directory), re-export
    "absolute path, unknown name": ("evil_app", "ABS", False),
    "absolute path, the real app's name and APP": ("toy_deq", "ABS", True),
    "relative path": ("toy_deq", "evil/toy_deq", True),
    "fallback by name to ./applications/<name>": ("evil_app", "", False),
    "./applications/<installed name> shadowing the installed app": ("slot_attention", "", True),
}


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("command", ["eval", "diagnose"])
def test_no_checkpoint_metadata_makes_deqkit_import_code(case, command, toy_checkpoint, tmp_path, monkeypatch):
    name, app_path, reexport = CASES[case]
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("DEQKIT_APPS", raising=False)
    marker = tmp_path / "MARKER"
    evil = payload(tmp_path / "evil" / name, marker, name, reexport)
    payload(tmp_path / "applications" / name, marker, name, reexport)  # the by-name fallback of old
    stored = str(evil) if app_path == "ABS" else app_path
    ckpt = craft(toy_checkpoint, tmp_path / "crafted.safetensors", app=name, app_path=stored)
    args = [command, str(ckpt), "--batches", "1"] + (["--json"] if command == "eval" else [])
    result = runner.invoke(cli, args)
    assert not marker.exists(), f"{case}: importing the checkpoint ran code it names"
    if name == "toy_deq":  # the checkout's own toy_deq is used, never the folder the file names
        assert result.exit_code == 0, result.output
    else:  # an installed name with foreign weights, or an unknown name: one line, non-zero, says --app
        lines = result.stderr.strip().splitlines()
        assert result.exit_code != 0 and len(lines) == 1 and lines[0].startswith("error: "), result.output
        if name == "evil_app":
            assert "--app" in lines[0] and "is not installed" in lines[0]


def test_the_user_names_the_application_with_app(toy_checkpoint, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    moved = craft(toy_checkpoint, tmp_path / "moved.safetensors", app="toy_deq", app_path="/nowhere/toy_deq")
    for spec in (str(TOY), "toy_deq"):
        assert find_checkpoint_app(moved, spec).name == "toy_deq"
    result = runner.invoke(cli, ["eval", str(moved), "--app", str(TOY), "--batches", "1", "--json"])
    assert result.exit_code == 0, result.output
    other = ROOT / "applications" / "slot_attention"
    result = runner.invoke(cli, ["eval", str(moved), "--app", str(other), "--batches", "1"])
    assert result.exit_code == 1 and "checkpoint of application 'toy_deq'" in result.stderr


def test_deqkit_apps_folders_are_where_the_user_lists_applications(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    mine = payload(tmp_path / "mine" / "toy_deq", tmp_path / "used", "toy_deq", True)
    monkeypatch.setenv("DEQKIT_APPS", str(mine.parent))
    assert load_registered("toy_deq").path == mine.resolve() and (tmp_path / "used").exists()
    monkeypatch.setenv("DEQKIT_APPS", os.pathsep.join([str(tmp_path / "missing")]))
    with pytest.raises(ApplicationError, match="is not installed"):
        load_registered("not_an_app")
