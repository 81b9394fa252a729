"""One report of solver and gradient health for every ``deqkit.FixedPoint`` inside any model.

``diagnose(model, batch, loss_fn)`` runs the model on a batch and, per fixed-point layer, reports the
residual after each iteration, NFE, the converged fraction (with the tolerance and stop mode it refers to),
‖J‖₂ and ρ(J) of J = ∂f/∂z at the fixed point, and, given a loss, the cosine between the Neumann(1) and the
exact IFT gradient w.r.t. the parameters. Each number comes with a one-line reading (:mod:`.readings`).
The model need not come from deqkit's trainer; ``deqkit diagnose`` builds its report with the same code.
"""

from __future__ import annotations

import math
from types import SimpleNamespace
from typing import Any, Callable, Iterable

import torch
from torch import nn

from deqkit.diagnostics import readings
from deqkit.diagnostics.residuals import residual_curves
from deqkit.diagnostics.spectral import spectral_norm, spectral_radius
from deqkit.errors import ConfigError

Batch = Any  # a tensor, or a tuple/list/dict of tensors
LossFn = Callable[[nn.Module, Batch], torch.Tensor]


def fixed_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every ``deqkit.FixedPoint`` in ``model`` (``'fp'`` for the model itself)."""
    from deqkit.fixed_point import FixedPoint

    return [(name or "fp", m) for name, m in model.named_modules() if isinstance(m, FixedPoint)]


def run_model(model: nn.Module, batch: Batch) -> Any:
    """The default forward pass of a batch: ``model(x)`` for a tensor, ``model(*batch)`` for a tuple or list,
    ``model(**batch)`` for a dict."""
    if isinstance(batch, dict):
        return model(**batch)
    if isinstance(batch, (tuple, list)):
        return model(*batch)
    return model(batch)


def diagnose(model: nn.Module, batch: Batch, loss_fn: LossFn | None = None, *,
             forward: Callable[[nn.Module, Batch], Any] | None = None, norm_iters: int = 50) -> dict[str, Any]:
    """The diagnostics report of ``model`` on one batch, as a JSON-ready dict (keys in docs/diagnostics.md).

    ``loss_fn(model, batch) -> Tensor[]`` (optional) runs the model itself and adds the Neumann(1)-vs-IFT
    gradient cosine; without it the model runs through ``forward`` (default :func:`run_model`) under
    ``no_grad``. For several batches (and the spread of the cosine over them) use :func:`diagnose_batches`.
    """
    return diagnose_batches(model, [batch], loss_fn, forward=forward, norm_iters=norm_iters)


def diagnose_batches(model: nn.Module, batches: Iterable[Batch], loss_fn: LossFn | None = None, *,
                     forward: Callable[[nn.Module, Batch], Any] | None = None,
                     norm_iters: int = 50) -> dict[str, Any]:
    """:func:`diagnose` over several batches: per-sample numbers are pooled, the cosine is per batch.

    The model runs in eval mode (dropout would make f random and its spectrum meaningless) with a fixed
    RNG seed per pass; its mode, its fixed points' backward estimators and the global RNG are restored.
    """
    from deqkit.backward import IFT, Neumann

    fps = fixed_points(model)
    if not fps:
        raise ConfigError(f"{type(model).__name__} has no deqkit.FixedPoint submodule to diagnose")
    forward = forward or run_model
    params = [p for p in model.parameters() if p.requires_grad]
    weights_finite = all(bool(torch.isfinite(t).all()) for t in _float_tensors(model))
    saved = {name: (fp.backward, fp.last) for name, fp in fps}
    acc: dict[str, dict[str, list[torch.Tensor]]] = {
        name: {k: [] for k in ("trace", "nfe", "converged", "residual", "norm", "radius")} for name, _ in fps}
    cosines: list[float] = []
    samples = count = 0
    was_training = model.training
    model.eval()
    try:
        for batch in batches:
            count += 1
            for _, fp in fps:
                fp.last = None
            if loss_fn is not None:
                cosines.append(_gradient_cosine(model, batch, loss_fn, params, fps, Neumann(k=1), IFT()))
            else:
                with torch.random.fork_rng(devices=[]), torch.no_grad():
                    torch.manual_seed(0)
                    forward(model, batch)
            ran = [(name, fp) for name, fp in fps if fp.last is not None]
            if not ran:
                raise ConfigError(f"no deqkit.FixedPoint of {type(model).__name__} ran on the batch")
            for name, fp in ran:
                _measure(fp, acc[name], norm_iters, weights_finite)
            samples += int(ran[0][1].last.info.nfe.numel())
    finally:
        model.train(was_training)
        for name, fp in fps:
            fp.backward, fp.last = saved[name]
    if count == 0:
        raise ConfigError("no batch to diagnose")
    report: dict[str, Any] = {"batches": count, "samples": samples}
    report.update(_cosine_summary(cosines if loss_fn is not None else None))
    report["fixed_points"] = {name: _summary(fp, acc[name]) for name, fp in fps if acc[name]["nfe"]}
    return json_safe(report)


def _float_tensors(model: nn.Module) -> list[torch.Tensor]:
    return [t for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()]


def _flat_grads(params: list[torch.Tensor]) -> torch.Tensor:
    return torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double()
                      for p in params])


def _loss_grads(model: nn.Module, batch: Batch, loss_fn: LossFn, params: list[torch.Tensor]) -> torch.Tensor:
    """Flattened gradient of ``loss_fn`` on ``batch`` (the same RNG stream on every call)."""
    model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loss = loss_fn(model, batch)
        if not (isinstance(loss, torch.Tensor) and loss.numel() == 1):
            raise ConfigError(f"loss_fn(model, batch) must return a scalar tensor, got "
                              f"{tuple(loss.shape) if isinstance(loss, torch.Tensor) else type(loss).__name__}")
        loss.reshape(()).backward()
    grads = _flat_grads(params) if params else torch.zeros(0, dtype=torch.float64)
    model.zero_grad(set_to_none=True)
    return grads


def _gradient_cosine(model: nn.Module, batch: Batch, loss_fn: LossFn, params: list[torch.Tensor],
                     fps: list[tuple[str, nn.Module]], neumann: Any, ift: Any) -> float:
    """cos(∇Neumann(1), ∇IFT) of the loss on one batch; the IFT pass is the one the spectra are read from."""
    for _, fp in fps:
        fp.backward = neumann
    approx = _loss_grads(model, batch, loss_fn, params)
    for _, fp in fps:
        fp.backward = ift
    exact = _loss_grads(model, batch, loss_fn, params)
    denom = approx.norm() * exact.norm()
    return float(approx @ exact / denom) if denom > 0 else math.nan


def _finite(z: Any) -> bool:
    """Whether every tensor of a fixed point (a tensor or a pytree of them) is finite."""
    if isinstance(z, torch.Tensor):
        return bool(torch.isfinite(z).all())
    if isinstance(z, dict):
        return all(_finite(v) for v in z.values())
    if isinstance(z, (list, tuple)):
        return all(_finite(v) for v in z)
    return True


def _or_nan(measure: Callable[[], torch.Tensor], samples: int, defined: bool) -> torch.Tensor:
    """``measure()`` on the CPU, or NaN per sample when it is not defined or a linear-algebra routine fails
    to converge; NaN is reported as null (a number that does not exist)."""
    if defined:
        try:
            return measure().detach().double().cpu()
        except torch.linalg.LinAlgError:
            pass
    return torch.full((samples,), math.nan, dtype=torch.float64)


def _measure(fp: nn.Module, a: dict[str, list[torch.Tensor]], norm_iters: int, weights_finite: bool) -> None:
    """Add one batch's solve record and spectra of ``fp`` to its accumulators."""
    last = fp.last
    info = last.info
    count = int(info.nfe.numel())
    a["trace"].append(info.trace.detach().double().cpu())
    a["nfe"].append(info.nfe.detach().cpu())
    a["converged"].append(info.converged.detach().cpu())
    a["residual"].append(info.residual.detach().cpu())
    f = fp.closure(*last.inputs)
    defined = weights_finite and _finite(last.z)  # df/dz has no spectrum when weights or z* hold NaN/Inf
    with torch.random.fork_rng(devices=[]):
        a["norm"].append(_or_nan(lambda: spectral_norm(f, last.z, iters=norm_iters), count, defined))
        a["radius"].append(_or_nan(lambda: spectral_radius(f, last.z), count, defined))


def _pad_trace(trace: torch.Tensor, length: int) -> torch.Tensor:
    """[T, B] -> [length, B], repeating the last row (a stopped sample keeps its last residual)."""
    if trace.shape[0] >= length:
        return trace
    return torch.cat([trace, trace[-1:].expand(length - trace.shape[0], -1)])


def _pooled(values: list[torch.Tensor]) -> torch.Tensor:
    """Every sample's value, finite ones only, as float64."""
    x = torch.cat([v.reshape(-1).double() for v in values]) if values else torch.zeros(0, dtype=torch.float64)
    return x[x.isfinite()]


def _stat(values: list[torch.Tensor], how: str) -> float:
    x = _pooled(values)
    if x.numel() == 0:
        return math.nan
    return float(x.mean() if how == "mean" else x.max())


def _fraction_over_1(values: list[torch.Tensor]) -> float:
    x = _pooled(values)
    return float((x >= 1).double().mean()) if x.numel() else math.nan


def _summary(fp: nn.Module, a: dict[str, list[torch.Tensor]]) -> dict[str, Any]:
    """The JSON figures of one fixed point, with the solve settings they refer to and their readings."""
    length = max(t.shape[0] for t in a["trace"])
    trace = torch.cat([_pad_trace(t, length) for t in a["trace"]], dim=1)
    curves = residual_curves(SimpleNamespace(trace=trace))
    norms, radii = _paired(a["norm"], a["radius"])
    stats: dict[str, Any] = {
        "solver": type(fp.solver).__name__, "tol": fp.tol, "stop_mode": fp.stop_mode, "max_iter": fp.max_iter,
        "fixed_count": fp.tol is None,
        "nfe": _stat(a["nfe"], "mean"), "nfe_max": _stat(a["nfe"], "max"),
        "converged": None if fp.tol is None else _stat(a["converged"], "mean"),
        "residual_mean": _stat(a["residual"], "mean"), "residual_max": _stat(a["residual"], "max"),
        "spectral_norm_mean": _stat(a["norm"], "mean"), "spectral_norm_max": _stat(a["norm"], "max"),
        "spectral_norm_over_1": _fraction_over_1(a["norm"]),
        "spectral_radius_mean": _stat(a["radius"], "mean"), "spectral_radius_max": _stat(a["radius"], "max"),
        "spectral_radius_over_1": _fraction_over_1(a["radius"]),
        "residual_curve_mean": [float(v) for v in curves["mean"]],
        "residual_curve_max": [float(v) for v in curves["max"]],
    }
    stats["readings"] = readings.fixed_point(stats, norms, radii)
    return stats


def _paired(norms: list[torch.Tensor], radii: list[torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-sample ‖J‖₂ and ρ(J) of the samples where both are finite (same order, so they can be compared)."""
    n = torch.cat([v.reshape(-1).double() for v in norms])
    r = torch.cat([v.reshape(-1).double() for v in radii])
    keep = n.isfinite() & r.isfinite()
    return n[keep], r[keep]


def _cosine_summary(cosines: list[float] | None) -> dict[str, Any]:
    """Mean, spread and reading of the per-batch gradient cosines (``None``: no loss was given)."""
    if cosines is None:
        return {"gradient_cosine": None, "gradient_cosine_per_batch": [], "gradient_cosine_min": None,
                "gradient_cosine_max": None, "gradient_cosine_sd": None,
                "gradient_cosine_reading": readings.gradient_cosine(None, [])}
    finite = [c for c in cosines if math.isfinite(c)]
    mean = sum(finite) / len(finite) if finite else math.nan
    sd = math.sqrt(sum((c - mean) ** 2 for c in finite) / (len(finite) - 1)) if len(finite) > 1 else math.nan
    return {"gradient_cosine": mean, "gradient_cosine_per_batch": cosines,
            "gradient_cosine_min": min(finite, default=math.nan), "gradient_cosine_max": max(finite, default=math.nan),
            "gradient_cosine_sd": sd, "gradient_cosine_reading": readings.gradient_cosine(mean, finite)}


def json_safe(value: Any) -> Any:
    """NaN/Inf -> None so the report is valid JSON."""
    if isinstance(value, dict):
        return {k: json_safe(v) for k, v in value.items()}
    if isinstance(value, list):
        return [json_safe(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value
