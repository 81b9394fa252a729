"""What the deqkit-vs-torchdeq benchmarks share: the tanh DEQ test problem, timing, a rich table, a JSON writer
that stamps every results file with its provenance.

The scripts are run as files (``python benchmarks/solvers.py``), so they import this module by its bare name.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from rich.console import Console
from rich.table import Table

from deqkit.provenance import provenance

RESULTS = Path(__file__).parent / "results"


@dataclass
class TanhDEQ:
    """f(z) = tanh(z Wᵀ + x Uᵀ) on a batch z [B, D]; ``calls`` counts batched evaluations of f."""

    W: torch.Tensor  # [D, D], ‖W‖₂ < 1 makes f a contraction
    U: torch.Tensor  # [D, D]
    x: torch.Tensor  # [B, D]
    calls: int = 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(z @ self.W.T + self.x @ self.U.T)

    def residual(self, z: torch.Tensor) -> torch.Tensor:
        """‖f(z) − z‖ per sample [B], evaluated here (not taken from either library's report)."""
        with torch.no_grad():
            return torch.linalg.vector_norm(torch.tanh(z @ self.W.T + self.x @ self.U.T) - z, dim=1)


def tanh_problem(
    kind: str, norm: float, batch: int, width: int, *, seed: int = 0, dtype: torch.dtype = torch.float32
) -> TanhDEQ:
    """A tanh DEQ whose W is Gaussian or orthogonal, rescaled to spectral norm ``norm``; x ~ N(0, I)."""
    gen = torch.Generator().manual_seed(seed)
    raw = torch.randn(width, width, generator=gen, dtype=torch.float64)
    if kind == "orthogonal":
        raw, _ = torch.linalg.qr(raw)
    elif kind != "gaussian":
        raise ValueError(f"unknown matrix kind {kind!r}; use 'gaussian' or 'orthogonal'")
    W = raw * (norm / torch.linalg.matrix_norm(raw, 2))
    U = torch.randn(width, width, generator=gen, dtype=torch.float64) / width**0.5
    x = torch.randn(batch, width, generator=gen, dtype=torch.float64)
    return TanhDEQ(W.to(dtype), U.to(dtype), x.to(dtype))


def _run_times(fn: Callable[[], Any], repeats: int, warmup: bool) -> list[float]:
    if warmup:
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return times


def median_seconds(fn: Callable[[], Any], repeats: int) -> float:
    """Median wall time of ``fn()`` over ``repeats`` runs after one warm-up run."""
    return statistics.median(_run_times(fn, repeats, warmup=True))


def best_seconds(fn: Callable[[], Any], repeats: int, *, warmup: bool = True) -> float:
    """Shortest wall time of ``fn()`` over ``repeats`` runs (the intrinsic cost: load from other processes only
    ever adds time), after one warm-up run unless ``warmup=False``."""
    return min(_run_times(fn, repeats, warmup))


def parser(doc: str | None, default_json: Path) -> argparse.ArgumentParser:
    """The command line every benchmark shares: ``--quick`` and ``--json PATH``."""
    p = argparse.ArgumentParser(description=(doc or "").split("\n")[0])
    p.add_argument("--quick", action="store_true", help="a small, fast version (used by the tests)")
    p.add_argument("--json", type=Path, default=default_json, help=f"where to write results (default {default_json})")
    return p


def mean_sd(values: Sequence[float]) -> dict[str, Any]:
    """``{"mean", "sd", "values"}`` of a sample; ``sd`` is the sample standard deviation (0 for one value)."""
    values = [float(v) for v in values]
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return {"mean": statistics.fmean(values), "sd": sd, "values": values}


def beyond_spread(a: dict[str, Any], b: dict[str, Any]) -> dict[str, Any]:
    """``b - a`` of two ``mean_sd`` groups, and whether it exceeds the spread (the sum of their standard
    deviations); a gap within the spread is "no difference beyond the spread"."""
    diff = b["mean"] - a["mean"]
    spread = a["sd"] + b["sd"]
    return {"difference": diff, "spread": spread, "beyond": abs(diff) > spread}


def print_table(title: str, columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> None:
    """Print rows (already formatted or plain values) as a rich table."""
    table = Table(title=title, show_lines=False)
    for column in columns:
        table.add_column(column, overflow="fold")
    for row in rows:
        table.add_row(*(fmt(v) for v in row))
    Console(width=200).print(table)


def fmt(value: Any) -> str:
    """Short human form of a number for the tables (JSON keeps full precision)."""
    if isinstance(value, bool) or value is None:
        return {True: "yes", False: "no", None: "-"}[value]
    if isinstance(value, float):
        return f"{value:.3g}" if 1e-3 <= abs(value) < 1e4 or value == 0 else f"{value:.2e}"
    return str(value)


def merged_provenance(previous: dict | None, kept_parts: Sequence[str]) -> dict | None:
    """The provenance of a results file some of whose parts were measured earlier: while a part is kept from
    ``previous`` the file keeps ``previous``'s block (``None`` if it had none), so a file never looks newer
    than its oldest number; rerunning every part gives it this process's block."""
    if not kept_parts:
        return provenance()
    block = (previous or {}).get("provenance")
    return block if isinstance(block, dict) else None


def write_json(path: Path, benchmark: str, config: dict, results: Any, *, code: Sequence[str] = (),
               provenance_block: dict | None | str = "this process") -> None:
    """Write ``{"benchmark", "environment", "provenance", "code", "config", "results"}`` to ``path`` atomically.

    ``provenance`` says which commit and packages produced the numbers (``provenance_block`` overrides it for
    files that keep parts measured earlier, see :func:`merged_provenance`); ``code`` lists the paths (relative
    to the repository) whose changes make them stale: deqkit, this file, the calling script and ``code``
    (``python -m benchmarks.docs --check`` reads both, see docs/benchmarks.md).
    """
    import torchdeq

    payload = {
        "benchmark": benchmark,
        "environment": {
            "torch": torch.__version__,
            "torchdeq": getattr(torchdeq, "__version__", "0.1.0"),
            "python": platform.python_version(),
            "threads": torch.get_num_threads(),
            "machine": platform.machine(),
        },
        "provenance": provenance() if provenance_block == "this process" else provenance_block,
        "code": code_paths(sys._getframe(1).f_globals.get("__file__"), *code),
        "config": config,
        "results": results,
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(path.suffix + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=float) + "\n")
    os.replace(tmp, path)
    print(f"wrote {path}")


def code_paths(*files: str | os.PathLike | None) -> list[str]:
    """``deqkit``, ``benchmarks/common.py`` and ``files``, as paths relative to the repository (sorted, unique);
    files outside it are left out."""
    root = Path(__file__).resolve().parent.parent
    paths = {"deqkit", "benchmarks/common.py"}
    for file in files:
        if file is None:
            continue
        full = Path(file) if Path(file).is_absolute() else root / file
        try:
            paths.add(full.resolve().relative_to(root).as_posix())
        except ValueError:
            continue
    return sorted(paths)
