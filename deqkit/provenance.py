"""Which code, packages and machine produced a file: the ``provenance`` block of run directories,
checkpoints and benchmark results, so that a documented number can be traced to the commit it was
measured at (see docs/benchmarks.md, "Documented numbers").

Git is asked only when deqkit runs from a checkout (the package folder's parent is the repository's top
level); anything git cannot answer (no git, not a checkout, a timeout) is recorded as ``None``.
"""

from __future__ import annotations

import functools
import os
import platform
import subprocess
import sys
from datetime import datetime, timezone
from importlib import metadata
from pathlib import Path
from typing import Any

GIT_TIMEOUT_S = 5.0
PACKAGES = ("numpy", "scipy", "safetensors")  # besides deqkit, python and torch


def package_root() -> Path:
    """The folder holding the ``deqkit`` package that is running (a checkout's top level, or site-packages)."""
    return Path(__file__).resolve().parent.parent


def _git(args: list[str], cwd: Path) -> str | None:
    """``git args`` in ``cwd``: its stripped stdout, or ``None`` if git is missing, fails or hangs."""
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=GIT_TIMEOUT_S,
                              check=False)
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip() if done.returncode == 0 else None


@functools.lru_cache(maxsize=None)
def git_state(root: Path | None = None) -> dict[str, Any]:
    """``{"commit": sha or None, "dirty": bool or None}`` of the checkout deqkit runs from.

    ``dirty`` means tracked files differ from the commit (untracked files, e.g. run directories, do not
    count). A deqkit installed into site-packages is not a checkout, even inside a project's repository.
    """
    root = (root or package_root()).resolve()
    top = _git(["rev-parse", "--show-toplevel"], root)
    if top is None or Path(top).resolve() != root:
        return {"commit": None, "dirty": None}
    commit = _git(["rev-parse", "HEAD"], root)
    status = _git(["status", "--porcelain", "--untracked-files=no"], root)
    return {"commit": commit, "dirty": None if status is None else bool(status)}


def _version(dist: str) -> str | None:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return None


def versions() -> dict[str, str | None]:
    """Versions of deqkit (the imported code's), python, torch and the other runtime dependencies."""
    import deqkit
    import torch

    found: dict[str, str | None] = {"deqkit": deqkit.__version__, "python": platform.python_version(),
                                    "torch": torch.__version__}
    found.update({name: _version(name) for name in PACKAGES})
    return found


def provenance() -> dict[str, Any]:
    """The block every results file, run directory and checkpoint carries (keys in docs/run_directory.md)."""
    import torch

    return {**git_state(), "versions": versions(), "argv": list(sys.argv), "cpu_count": os.cpu_count(),
            "torch_threads": torch.get_num_threads(), "platform": platform.platform(),
            "time": datetime.now(timezone.utc).isoformat(timespec="seconds")}


def version_line() -> str:
    """``deqkit 0.1.0 (commit <sha>[, dirty])`` for ``deqkit --version``; without torch, so it is quick."""
    import deqkit

    state = git_state()
    if state["commit"] is None:
        return f"deqkit {deqkit.__version__}"
    return f"deqkit {deqkit.__version__} (commit {state['commit']}{', dirty' if state['dirty'] else ''})"
