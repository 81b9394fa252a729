"""The run directory, the contract other tools read (see docs/run_directory.md).

``config.json`` (resolved config), ``metrics.jsonl`` (one object per logged step),
``checkpoints/last.safetensors`` and ``checkpoints/step_XXXXXXX.safetensors``, ``images/*.png``,
and ``tensorboard/`` when TensorBoard is installed. Only rank 0 writes here.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

from deqkit.train.checkpoint import atomic_write
from deqkit.train.errors import UsageError


class RunDir:
    """Paths and writers of one run's output folder."""

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        self.config = self.root / "config.json"
        self.metrics = self.root / "metrics.jsonl"
        self.checkpoints = self.root / "checkpoints"
        self.last = self.checkpoints / "last.safetensors"
        self.images = self.root / "images"
        self._tb: Any = None

    def holds_run(self) -> bool:
        """Whether any file of a run is here (config, metrics, a checkpoint, a picture, TensorBoard logs), so
        that a new run never overwrites one, even one killed before its first checkpoint."""
        try:
            if self.config.exists() or self.metrics.exists():
                return True
            return any(path.is_file() for folder in (self.checkpoints, self.images, self.root / "tensorboard")
                       if folder.is_dir() for path in folder.rglob("*"))
        except OSError:  # unreadable: create() reports it
            return False

    def periodic_checkpoints(self) -> list[Path]:
        """``step_*.safetensors``, oldest first."""
        return sorted(self.checkpoints.glob("step_*.safetensors")) if self.checkpoints.is_dir() else []

    def create(self) -> None:
        """Make the folders and prove they are writable; an unusable folder is a one-line :class:`UsageError`."""
        probe = self.root / f".deqkit-write-test-{os.getpid()}"
        try:
            for folder in (self.root, self.checkpoints, self.images):
                folder.mkdir(parents=True, exist_ok=True)
            probe.write_bytes(b"")
            probe.unlink()
            for stale in self.checkpoints.glob(".*.tmp-*"):  # left by a process killed while writing
                stale.unlink(missing_ok=True)
        except OSError as err:
            reason = err.strerror or type(err).__name__
            where = f" ({err.filename})" if err.filename else ""
            raise UsageError(f"cannot use {self.root} as a run directory: {reason}{where}; "
                             "choose another --out") from None

    def write_config(self, payload: dict[str, Any]) -> None:
        atomic_write(self.config, (json.dumps(payload, indent=2) + "\n").encode())

    def periodic(self, step: int) -> Path:
        return self.checkpoints / f"step_{step:07d}.safetensors"

    def prune(self, keep: int) -> None:
        """Delete all but the newest ``keep`` periodic checkpoints (``last`` is never deleted)."""
        periodic = self.periodic_checkpoints()
        for path in periodic[:max(0, len(periodic) - keep)]:
            path.unlink(missing_ok=True)

    def append(self, record: dict[str, Any]) -> None:
        with open(self.metrics, "a", encoding="utf-8") as handle:
            handle.write(json.dumps(_finite(record)) + "\n")
        self._tensorboard(record)

    def truncate_after(self, step: int) -> None:
        """Drop records logged after ``step`` (by a run that died after its last checkpoint)."""
        if not self.metrics.exists():
            return
        kept = [line for line in self.metrics.read_text(encoding="utf-8").splitlines()
                if line.strip() and _step_of(line) <= step]
        atomic_write(self.metrics, "".join(line + "\n" for line in kept).encode())

    def records(self) -> list[dict[str, Any]]:
        return read_metrics(self.metrics)

    def _tensorboard(self, record: dict[str, Any]) -> None:
        if self._tb is None:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except Exception:  # tensorboard is optional
                self._tb = False
                return
            self._tb = SummaryWriter(str(self.root / "tensorboard"))
        if self._tb is False:
            return
        for key, value in _flat(record).items():
            if key not in ("step", "time") and isinstance(value, (int, float)):
                self._tb.add_scalar(key, value, record["step"])

    def close(self) -> None:
        if self._tb:
            self._tb.close()


def read_config(path: str | Path) -> dict[str, Any]:
    """A run's config.json (``{}`` if missing or unreadable)."""
    try:
        return json.loads(Path(path).read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return {}


def read_metrics(path: str | Path) -> list[dict[str, Any]]:
    """The records of a metrics.jsonl file (a torn last line from a killed process is ignored)."""
    records = []
    path = Path(path)
    if not path.exists():
        return records
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            records.append(json.loads(line))
        except json.JSONDecodeError:
            continue
    return records


def _step_of(line: str) -> float:
    try:
        return json.loads(line)["step"]
    except (json.JSONDecodeError, KeyError, TypeError):
        return math.inf


def _finite(value: Any) -> Any:
    """JSON has no NaN/Inf: write them as null."""
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def _flat(record: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    out = {}
    for key, value in record.items():
        if isinstance(value, dict):
            out.update(_flat(value, prefix + key + "/"))
        else:
            out[prefix + key] = value
    return out
