"""``deqkit diagnose``: solver and gradient health of every fixed-point layer of a trained model.

For a few batches of a split, the report of :func:`deqkit.diagnostics.diagnose_batches` (residuals, NFE,
converged fraction, ‖J‖₂ and ρ(J) at the fixed point, the Neumann(1)-vs-IFT cosine of the application's
training loss, each with a one-line reading); keys documented in docs/cli.md.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import torch

from deqkit.train import monitor
from deqkit.train.data import eval_batches, to_device
from deqkit.train.errors import UsageError
from deqkit.train.restore import Restored
from deqkit.train.run_dir import read_metrics


def diagnose(restored: Restored, *, batches: int = 2, split: str | None = None,
             device: torch.device | str = "cpu", norm_iters: int = 50) -> dict[str, Any]:
    """The diagnostics report of a restored checkpoint as a JSON-ready dict: :func:`deqkit.diagnose`'s
    report on the first ``batches`` batches of ``split`` with the application's training loss, plus which
    checkpoint and split it describes."""
    from deqkit.diagnostics.report import diagnose_batches

    app, config, model = restored.app, restored.config, restored.model
    split = split or config.train.eval_split
    if split not in app.splits:
        raise UsageError(f"application '{app.name}' has no split '{split}'; splits: {', '.join(app.splits)}")
    if not monitor.fixed_points(model):
        raise UsageError(f"the model of '{app.name}' has no deqkit.FixedPoint layer to diagnose")
    loader = eval_batches(app.build_dataset(config, split), config.train.batch_size, batches, app.collate)
    report = diagnose_batches(model, (to_device(batch, device) for batch in loader),
                              lambda m, batch: app.loss(m, batch, config)[0], norm_iters=norm_iters)
    return {"app": app.name, "checkpoint": str(restored.path), "step": restored.checkpoint.step, "split": split,
            **report}


def write_plots(report: dict[str, Any], folder: str | Path, metrics_file: Path | None = None) -> list[Path]:
    """PNGs in ``folder``: ``residuals.png`` (per iteration, log scale) and, when ``metrics_file`` (the
    metrics.jsonl of the checkpoint's run directory) exists, ``spectral_norm.png`` over the training steps."""
    from deqkit.plots import save_curves

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    what = report.get("app") or report.get("model")
    written = []
    series = {}
    for name, fp in report["fixed_points"].items():
        xs = list(range(1, len(fp["residual_curve_mean"]) + 1))
        series[f"{name} mean"] = (xs, [v if v is not None else math.nan for v in fp["residual_curve_mean"]])
        series[f"{name} max"] = (xs, [v if v is not None else math.nan for v in fp["residual_curve_max"]])
    written.append(save_curves(folder / "residuals.png", series, title=f"{what}: residual per iteration",
                               xlabel="iteration", ylabel="residual", logy=True))
    records = read_metrics(metrics_file) if metrics_file is not None else []
    norms: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for name, stats in (record.get("solver") or {}).items():
            if stats.get("spectral_norm") is not None:
                xs, ys = norms.setdefault(name, ([], []))
                xs.append(record["step"])
                ys.append(stats["spectral_norm"])
    if norms:
        written.append(save_curves(folder / "spectral_norm.png", norms,
                                   title=f"{what}: spectral norm of df/dz during training",
                                   xlabel="step", ylabel="spectral norm (batch mean)"))
    return [Path(p) for p in written]
