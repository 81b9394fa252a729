"""Residual diagnostics of a batch of fixed-point solves, read from the solve's ``info``.

``info`` is anything with the attributes of ``deqkit.SolveInfo``: ``nfe`` LongTensor[B], ``residual`` [B],
``converged`` / ``diverged`` BoolTensor[B], and ``trace`` [T, B], the residual after each iteration where a
sample that stopped repeats its last value. Residuals that stop falling (a convergence rate near 0, a
falling fraction of converged samples, NFE piling up at ``max_iter``) are the other face of the growing
Jacobian norm that ``deqkit.diagnostics.spectral`` measures.
"""

from __future__ import annotations

from typing import Any, Sequence

import torch


def _trace(info: Any) -> torch.Tensor:
    trace = torch.as_tensor(info.trace)
    if trace.dim() != 2:
        raise ValueError(f"info.trace must have shape [T, B], got {tuple(trace.shape)}")
    return trace.double()


def active_length(info: Any) -> torch.Tensor:
    """LongTensor[B]: iterations each sample was still running, i.e. the length of its trace before the
    trailing run of repeated values (a sample whose last two values differ ran all T iterations)."""
    trace = _trace(info)
    steps, batch = trace.shape
    if steps <= 1:
        return torch.full((batch,), steps, dtype=torch.long, device=trace.device)
    # NaN != NaN: two NaNs count as a repeat, so a diverged sample's frozen NaN tail counts as stopped.
    changed = (trace[1:] != trace[:-1]) & ~(trace[1:].isnan() & trace[:-1].isnan())
    index = torch.arange(1, steps, device=trace.device)[:, None].expand_as(changed)
    return torch.where(changed, index, torch.zeros_like(index)).amax(dim=0) + 1


def residual_curves(info: Any) -> dict[str, torch.Tensor]:
    """Per-iteration summaries of the batch's residuals, each a [T] tensor (float64).

    Keys: ``mean``, ``max``, ``min``, ``median`` (midpoint of the middle two for an even count),
    ``geomean`` (the geometric mean, the natural average of quantities that fall geometrically) and
    ``active`` (fraction of samples still running). Non-finite residuals (diverged samples) are left out
    of the statistics; an iteration where none is finite gives NaN.
    """
    trace = _trace(info)
    finite = trace.isfinite()
    count = finite.sum(dim=1)
    safe = torch.where(finite, trace, torch.zeros_like(trace))
    nan = torch.full_like(count, float("nan"), dtype=trace.dtype)
    tiny = torch.finfo(trace.dtype).tiny
    mean = torch.where(count > 0, safe.sum(dim=1) / count.clamp_min(1), nan)
    log_mean = torch.where(finite, safe.clamp_min(tiny).log(), torch.zeros_like(trace)).sum(dim=1)
    geomean = torch.where(count > 0, (log_mean / count.clamp_min(1)).exp(), nan)
    high = torch.where(finite, trace, torch.full_like(trace, -float("inf"))).amax(dim=1)
    low = torch.where(finite, trace, torch.full_like(trace, float("inf"))).amin(dim=1)
    median = torch.where(finite, trace, torch.full_like(trace, float("nan"))).nanquantile(0.5, dim=1)
    active = active_length(info)
    steps = torch.arange(trace.shape[0], device=trace.device)
    running = (steps[:, None] < active[None, :]).double().mean(dim=1)
    return {
        "mean": mean,
        "max": torch.where(count > 0, high, nan),
        "min": torch.where(count > 0, low, nan),
        "median": median,
        "geomean": geomean,
        "active": running,
    }


def convergence_rate(info: Any) -> torch.Tensor:
    """Tensor[B] (float64): least-squares slope of log(residual) per iteration over each sample's active part.

    Negative means converging; exp(rate) is the average contraction factor per iteration (−2.3 is one
    decimal digit per iteration). A rate near 0 means the residual stopped falling. Non-finite residuals are
    left out of the fit and zero residuals are clamped to the smallest positive float; a sample with fewer
    than two usable points gets NaN.
    """
    trace = _trace(info)
    steps = trace.shape[0]
    active = active_length(info)
    t = torch.arange(steps, dtype=trace.dtype, device=trace.device)[:, None].expand_as(trace)
    use = (t < active[None, :].to(trace.dtype)) & trace.isfinite()
    y = torch.where(use, trace.clamp_min(torch.finfo(trace.dtype).tiny).log(), torch.zeros_like(trace))
    w = use.to(trace.dtype)
    n = w.sum(dim=0)
    t_mean = (w * t).sum(dim=0) / n.clamp_min(1)
    y_mean = (w * y).sum(dim=0) / n.clamp_min(1)
    dt = (t - t_mean) * w
    var = (dt * dt).sum(dim=0)
    slope = (dt * (y - y_mean)).sum(dim=0) / var.clamp_min(torch.finfo(trace.dtype).tiny)
    return torch.where(n >= 2, slope, torch.full_like(slope, float("nan")))


def fraction_converged(info: Any) -> float:
    """Fraction of samples whose solve converged, as a plain float."""
    converged = torch.as_tensor(info.converged)
    return float(converged.double().mean()) if converged.numel() else float("nan")


def nfe_histogram(info: Any, bins: int | Sequence[float] = 10) -> tuple[torch.Tensor, torch.Tensor]:
    """Histogram of function evaluations per sample: (counts LongTensor[K], edges float64 Tensor[K+1]).

    ``bins`` is a number of equal-width bins over [min NFE, max NFE] or explicit increasing edges; the last
    bin includes its right edge (as numpy's histogram does). Computed on the CPU.
    """
    nfe = torch.as_tensor(info.nfe).detach().cpu().double().flatten()
    if isinstance(bins, int):
        if bins < 1:
            raise ValueError(f"bins must be >= 1 or a sequence of edges, got {bins}")
        low, high = (float(nfe.min()), float(nfe.max())) if nfe.numel() else (0.0, 1.0)
        if high == low:
            low, high = low - 0.5, high + 0.5
        edges = torch.linspace(low, high, bins + 1, dtype=torch.float64)
    else:
        edges = torch.as_tensor(list(bins), dtype=torch.float64)
        if edges.dim() != 1 or edges.numel() < 2 or not bool((edges[1:] > edges[:-1]).all()):
            raise ValueError("bins must be an integer >= 1 or at least two strictly increasing edges")
    counts, edges = torch.histogram(nfe, bins=edges)
    return counts.long(), edges


def summarize(info: Any) -> dict[str, float]:
    """One plain-float dict for logging: convergence fractions, NFE, final residuals and rates.

    Keys: ``fraction_converged``, ``fraction_diverged``, ``nfe_mean``, ``nfe_max``, ``residual_mean``,
    ``residual_median``, ``residual_max`` (over finite residuals), ``rate_median`` (median
    ``convergence_rate``, NaN samples left out) and ``iterations`` (T, the length of the trace).
    """
    nfe = torch.as_tensor(info.nfe).double()
    residual = torch.as_tensor(info.residual).double()
    finite = residual[residual.isfinite()]
    rate = convergence_rate(info)
    rate = rate[~rate.isnan()]

    def stat(x: torch.Tensor, how: str) -> float:
        if x.numel() == 0:
            return float("nan")
        return float(getattr(x, how)()) if how != "median" else float(x.quantile(0.5))

    return {
        "fraction_converged": fraction_converged(info),
        "fraction_diverged": float(torch.as_tensor(info.diverged).double().mean()) if nfe.numel() else float("nan"),
        "nfe_mean": stat(nfe, "mean"),
        "nfe_max": stat(nfe, "max"),
        "residual_mean": stat(finite, "mean"),
        "residual_median": stat(finite, "median"),
        "residual_max": stat(finite, "max"),
        "rate_median": stat(rate, "median"),
        "iterations": float(_trace(info).shape[0]),
    }
