"""``deqkit diagnose``: solver and gradient health of every fixed-point layer of a trained model.

For a few batches of a split: the residual after each iteration (mean/max over samples), NFE, the
converged fraction, the spectral norm and radius of df/dz at the fixed point, and the cosine between the
Neumann(1) gradient and the exact IFT gradient of the application's training loss w.r.t. the parameters.
The figures are plain JSON-ready numbers (keys documented in docs/cli.md).
"""

from __future__ import annotations

import math
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch

from deqkit.train import monitor
from deqkit.train.data import eval_batches, to_device
from deqkit.train.errors import UsageError
from deqkit.train.restore import Restored
from deqkit.train.run_dir import read_metrics


def _pad_trace(trace: torch.Tensor, length: int) -> torch.Tensor:
    """[T, B] -> [length, B], repeating the last row (a stopped sample keeps its last residual)."""
    if trace.shape[0] >= length:
        return trace
    return torch.cat([trace, trace[-1:].expand(length - trace.shape[0], -1)])


def _flat_grads(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                      for p in params])


def _loss_grads(restored: Restored, batch: Any, params: list[torch.Tensor]) -> torch.Tensor:
    """Flattened gradient of the application's loss on ``batch`` (same RNG stream on every call)."""
    restored.model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loss, _ = restored.app.loss(restored.model, batch, restored.config)
        loss.backward()
    grads = _flat_grads(params)
    restored.model.zero_grad(set_to_none=True)
    return grads


def _finite(z: Any) -> bool:
    """Whether every tensor of a fixed point (a tensor or a pytree of them) is finite."""
    if isinstance(z, torch.Tensor):
        return bool(torch.isfinite(z).all())
    if isinstance(z, dict):
        return all(_finite(v) for v in z.values())
    if isinstance(z, (list, tuple)):
        return all(_finite(v) for v in z)
    return True


def _or_nan(measure: Any, samples: int, defined: bool) -> torch.Tensor:
    """``measure()`` on the CPU, or NaN per sample when it is not defined or a linear-algebra routine fails
    to converge; NaN is reported as null, as docs/cli.md promises for numbers that do not exist."""
    if defined:
        try:
            return measure().detach().cpu()
        except torch.linalg.LinAlgError:
            pass
    return torch.full((samples,), math.nan)


def _stat(values: list[torch.Tensor], how: str) -> float:
    if not values:
        return math.nan
    x = torch.cat([v.reshape(-1).double() for v in values])
    x = x[x.isfinite()]
    if x.numel() == 0:
        return math.nan
    return float(x.mean() if how == "mean" else x.max())


def diagnose(restored: Restored, *, batches: int = 2, split: str | None = None,
             device: torch.device | str = "cpu", norm_iters: int = 50) -> dict[str, Any]:
    """The diagnostics report of a restored checkpoint as a JSON-ready dict."""
    from deqkit.backward import IFT, Neumann
    from deqkit.diagnostics import residual_curves, spectral_norm, spectral_radius

    app, config, model = restored.app, restored.config, restored.model
    split = split or config.train.eval_split
    if split not in app.splits:
        raise UsageError(f"application '{app.name}' has no split '{split}'; splits: {', '.join(app.splits)}")
    fps = monitor.fixed_points(model)
    if not fps:
        raise UsageError(f"the model of '{app.name}' has no deqkit.FixedPoint layer to diagnose")
    params = [p for p in model.parameters() if p.requires_grad]
    original = {name: fp.backward for name, fp in fps}
    acc: dict[str, dict[str, list[torch.Tensor]]] = {
        name: {k: [] for k in ("trace", "nfe", "converged", "residual", "norm", "radius")} for name, _ in fps}
    cosines, samples = [], 0
    model.eval()
    loader = eval_batches(app.build_dataset(config, split), config.train.batch_size, batches, app.collate)
    try:
        for batch in loader:
            batch = to_device(batch, device)
            for _, fp in fps:
                fp.backward = Neumann(k=1)
            neumann = _loss_grads(restored, batch, params)
            for _, fp in fps:
                fp.backward = IFT()
            ift = _loss_grads(restored, batch, params)
            denom = neumann.norm() * ift.norm()
            cosines.append(float(neumann @ ift / denom) if denom > 0 else math.nan)
            for name, fp in fps:
                last, a = fp.last, acc[name]
                info = last.info
                samples_here = int(info.nfe.numel())
                a["trace"].append(info.trace.detach().double().cpu())
                a["nfe"].append(info.nfe.detach().cpu())
                a["converged"].append(info.converged.detach().cpu())
                a["residual"].append(info.residual.detach().cpu())
                f = fp.closure(*last.inputs)
                # df/dz has no spectrum when the weights or the fixed point hold NaN/Inf: report null
                defined = not restored.nonfinite and _finite(last.z)
                with torch.random.fork_rng(devices=[]):
                    a["norm"].append(_or_nan(lambda: spectral_norm(f, last.z, iters=norm_iters), samples_here,
                                             defined))
                    a["radius"].append(_or_nan(lambda: spectral_radius(f, last.z), samples_here, defined))
            samples += samples_here
    finally:
        for name, fp in fps:
            fp.backward = original[name]
    report: dict[str, Any] = {"app": app.name, "checkpoint": str(restored.path), "step": restored.checkpoint.step,
                              "split": split, "batches": len(cosines), "samples": samples,
                              "gradient_cosine": sum(cosines) / len(cosines) if cosines else math.nan,
                              "gradient_cosine_per_batch": cosines, "fixed_points": {}}
    for name, a in acc.items():
        length = max(t.shape[0] for t in a["trace"])
        trace = torch.cat([_pad_trace(t, length) for t in a["trace"]], dim=1)
        curves = residual_curves(SimpleNamespace(trace=trace))
        report["fixed_points"][name] = {
            "nfe": _stat(a["nfe"], "mean"), "nfe_max": _stat(a["nfe"], "max"),
            "converged": _stat(a["converged"], "mean"),
            "residual_mean": _stat(a["residual"], "mean"), "residual_max": _stat(a["residual"], "max"),
            "spectral_norm_mean": _stat(a["norm"], "mean"), "spectral_norm_max": _stat(a["norm"], "max"),
            "spectral_radius_mean": _stat(a["radius"], "mean"),
            "spectral_radius_max": _stat(a["radius"], "max"),
            "residual_curve_mean": [float(v) for v in curves["mean"]],
            "residual_curve_max": [float(v) for v in curves["max"]],
        }
    return _json_safe(report)


def _json_safe(value: Any) -> Any:
    """NaN/Inf -> None so the report is valid JSON."""
    if isinstance(value, dict):
        return {k: _json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


def write_plots(report: dict[str, Any], restored: Restored, folder: str | Path) -> list[Path]:
    """PNGs in ``folder``: ``residuals.png`` (per iteration, log scale) and, when the checkpoint sits in a
    run directory with a metrics.jsonl, ``spectral_norm.png`` over the training steps."""
    from deqkit.plots import save_curves

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    written = []
    series = {}
    for name, fp in report["fixed_points"].items():
        xs = list(range(1, len(fp["residual_curve_mean"]) + 1))
        series[f"{name} mean"] = (xs, [v if v is not None else math.nan for v in fp["residual_curve_mean"]])
        series[f"{name} max"] = (xs, [v if v is not None else math.nan for v in fp["residual_curve_max"]])
    written.append(save_curves(folder / "residuals.png", series, title=f"{report['app']}: residual per iteration",
                               xlabel="iteration", ylabel="residual", logy=True))
    records = read_metrics(restored.path.parent.parent / "metrics.jsonl")
    norms: dict[str, tuple[list[float], list[float]]] = {}
    for record in records:
        for name, stats in (record.get("solver") or {}).items():
            if stats.get("spectral_norm") is not None:
                xs, ys = norms.setdefault(name, ([], []))
                xs.append(record["step"])
                ys.append(stats["spectral_norm"])
    if norms:
        written.append(save_curves(folder / "spectral_norm.png", norms,
                                   title=f"{report['app']}: spectral norm of df/dz during training",
                                   xlabel="step", ylabel="spectral norm (batch mean)"))
    return [Path(p) for p in written]
