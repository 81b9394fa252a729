"""Packaging: the wheel installs deqkit and the bundled applications (as ``deqkit_applications``, never a
top-level ``applications``), and registers each application under the ``deqkit.applications`` entry points."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")  # Python >= 3.11

ROOT = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((ROOT / "pyproject.toml").read_text())


def packages_on_disk() -> set[str]:
    found = {".".join(p.parent.relative_to(ROOT).parts) for p in (ROOT / "deqkit").rglob("__init__.py")}
    found |= {"deqkit_applications" + "".join("." + part for part in p.parent.relative_to(ROOT / "applications").parts)
              for p in (ROOT / "applications").rglob("__init__.py")}
    return {name for name in found if "__pycache__" not in name}


def test_every_package_folder_is_listed_for_the_wheel():
    assert set(PYPROJECT["tool"]["setuptools"]["packages"]) == packages_on_disk()
    assert PYPROJECT["tool"]["setuptools"]["package-dir"] == {"deqkit_applications": "applications"}


def test_every_bundled_application_has_an_entry_point_under_its_name():
    entries = PYPROJECT["project"]["entry-points"]["deqkit.applications"]
    bundled = {p.name for p in (ROOT / "applications").iterdir() if (p / "app.py").is_file()}
    assert set(entries) == bundled
    assert all(value == f"deqkit_applications.{name}.app:APP" for name, value in entries.items())


def test_a_wheel_install_trains_and_evaluates_a_bundled_application_by_name(tmp_path):
    """Build the wheel, install it in a fresh venv (reusing this interpreter's torch etc.), and run the CLI
    from a folder that has no applications/ of its own. (About 40 s: part of the default suite, so CI runs it.)"""
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(ROOT), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True)
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--system-site-packages", str(venv)], check=True)
    python = venv / "bin" / "python"
    subprocess.run([str(python), "-m", "pip", "install", "-q", "--no-deps", *map(str, wheels.glob("*.whl"))],
                   check=True)
    work = tmp_path / "elsewhere"
    work.mkdir()
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}  # the venv's own deqkit, not a checkout's
    site = subprocess.run([str(python), "-c", "import deqkit, sysconfig; print(deqkit.__file__); "
                           "print(sysconfig.get_paths()['purelib'])"], cwd=work, capture_output=True, text=True,
                          check=True, env=env)
    deqkit_file, purelib = site.stdout.split()
    assert deqkit_file.startswith(str(venv)) and not (Path(purelib) / "applications").exists()

    def deqkit(*args: str) -> subprocess.CompletedProcess:
        return subprocess.run([str(venv / "bin" / "deqkit"), *args], cwd=work, capture_output=True, text=True,
                              env=env)

    listed = deqkit("apps")
    assert listed.returncode == 0 and all(name in listed.stdout for name in ("slate", "slot_attention"))
    trained = deqkit("train", "slot_attention", "--preset", "smoke", "--out", "run", "-q")
    assert trained.returncode == 0, trained.stderr
    scored = deqkit("eval", "run/checkpoints/last.safetensors", "--batches", "1", "--json")
    assert scored.returncode == 0 and '"app": "slot_attention"' in scored.stdout, scored.stderr
