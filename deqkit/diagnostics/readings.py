"""One-line readings of the diagnostics report's numbers: what ‖J‖₂, ρ(J), the converged fraction and the
gradient cosine say about a fixed-point layer.

The maths behind them, for J = ∂f/∂z at z*: near z* the error of z ← f(z) evolves as e ← J e, so it
vanishes for every start iff ρ(J) < 1 (asymptotically by a factor ρ per step); it shrinks at *every* step
iff ‖J‖₂ < 1. ‖J‖₂ ≥ ρ(J) always; ‖J‖₂ ≥ 1 > ρ(J) (a non-normal J) converges, but only after possible
transient growth. With ρ(J) ≥ 1 plain iteration does not converge to z* however long it runs; Anderson
and Broyden solve f(z) − z = 0 and may still, but a truncated Neumann series Σ_{i<k} (Jᵀ)ⁱ grows with k.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import torch

STOP_MODES = {"rel": "‖f(z)−z‖/‖f(z)‖", "abs": "‖f(z)−z‖"}


def _g(x: float) -> str:
    return f"{x:.3g}"


def solve_settings(stats: dict[str, Any]) -> str:
    """The tolerance and stop mode the converged fraction refers to, e.g. ``tol 1e-4 on ‖f(z)−z‖/‖f(z)‖``."""
    if stats["tol"] is None:
        return f"none: a fixed count of {stats['max_iter']} iterations"
    return f"{stats['tol']:g} on {STOP_MODES.get(stats['stop_mode'], stats['stop_mode'])}, max_iter {stats['max_iter']}"


def converged(stats: dict[str, Any]) -> str:
    """What the converged fraction means, and why a fixed-count loop has none."""
    if stats["tol"] is None:
        residual = stats.get("residual_mean")
        last = f" (mean {_g(residual)})" if residual is not None and math.isfinite(residual) else ""
        return (f"tol=None runs exactly {stats['max_iter']} iterations and tests no tolerance, so no sample can "
                f"converge: read the last step's residual{last} instead; J below is taken at the last iterate")
    fraction = stats["converged"]
    if fraction is None or not math.isfinite(fraction):
        return "no finite residual: nothing converged"
    text = (f"{fraction:.0%} of samples reached residual ≤ {stats['tol']:g} "
            f"({STOP_MODES.get(stats['stop_mode'], stats['stop_mode'])}) within {stats['max_iter']} iterations")
    if fraction < 1:
        text += "; the others stopped at max_iter or diverged"
    return text


def spectral_radius(radii: torch.Tensor) -> str:
    """Reading of ρ(J) over samples (``radii``: finite per-sample values)."""
    if radii.numel() == 0:
        return "not measured (NaN/Inf in the weights or the fixed point)"
    worst, n = float(radii.max()), radii.numel()
    over = int((radii >= 1).sum())
    if over == 0:
        if worst == 0:
            return "ρ(J) = 0 for every sample: the error near z* vanishes within a few steps"
        steps = math.ceil(math.log(10) / -math.log(worst))
        plural = "s" if steps > 1 else ""
        return (f"ρ(J) < 1 for every sample (max {_g(worst)}): z ← f(z) contracts near z*, the error shrinking "
                f"asymptotically by ρ per step, about {steps} step{plural} per decimal digit at the worst sample")
    return (f"ρ(J) ≥ 1 for {over} of {n} samples (max {_g(worst)}): there z ← f(z) does not converge near z* "
            f"(the error grows along an eigenvector with |λ| ≥ 1) and more iterations will not help; Anderson or "
            f"Broyden may still solve f(z) = z, but Neumann(k) and unrolled gradients grow with k")


def spectral_norm(norms: torch.Tensor, radii: torch.Tensor) -> str:
    """Reading of ‖J‖₂ over samples, against ρ(J) of the same samples (``norms``, ``radii`` paired, finite)."""
    if norms.numel() == 0:
        return "not measured (NaN/Inf in the weights or the fixed point)"
    worst, n = float(norms.max()), norms.numel()
    over = norms >= 1
    if not bool(over.any()):
        return (f"‖J‖₂ < 1 for every sample (max {_g(worst)}): f is a contraction near z*, every step shrinks "
                f"the error from the first one")
    transient = int((over & (radii < 1)).sum())
    unstable = int((over & (radii >= 1)).sum())
    parts = []
    if transient:
        parts.append(f"for {transient} of {n} samples ‖J‖₂ ≥ 1 > ρ(J): J is non-normal, the iteration "
                     f"contracts only asymptotically and single steps can first grow the error")
    if unstable:
        parts.append(f"for {unstable} of {n} samples ρ(J) ≥ 1 as well (see ρ)")
    return f"max ‖J‖₂ {_g(worst)}: " + "; ".join(parts)


def gradient_cosine(mean: float | None, per_batch: Sequence[float]) -> str:
    """Reading of cos(∇Neumann(1), ∇IFT): the angle, whether −∇Neumann(1) descends, the spread over batches."""
    if mean is None:
        return "no loss given: the Neumann(1) and IFT gradients were not compared"
    if not math.isfinite(mean):
        return "not defined (a zero or non-finite gradient)"
    angle = math.degrees(math.acos(max(-1.0, min(1.0, mean))))
    if mean >= 0.95:
        text = f"the one-step Neumann(1) gradient points almost where the exact IFT gradient does ({angle:.0f}°)"
    elif mean > 0:
        text = (f"−∇Neumann(1) still descends the loss (cos > 0) but is {angle:.0f}° off the exact gradient: "
                f"a biased direction")
    else:
        text = f"the Neumann(1) gradient does not descend the loss (cos ≤ 0, {angle:.0f}° off): use IFT"
    if len(per_batch) < 2:
        return text + "; one batch, so no spread (diagnose more batches)"
    low, high = min(per_batch), max(per_batch)
    text += f"; over {len(per_batch)} batches it ranges {_g(low)} to {_g(high)}"
    if high - low > 0.3:
        text += ": the mean hides batches that disagree"
    if low <= 0 < mean:
        text += "; on some batches it points uphill"
    return text


def fixed_point(stats: dict[str, Any], norms: torch.Tensor, radii: torch.Tensor) -> dict[str, str]:
    """The readings of one fixed point's figures, keyed like the report's ``readings`` field."""
    return {"settings": solve_settings(stats), "converged": converged(stats),
            "spectral_radius": spectral_radius(radii), "spectral_norm": spectral_norm(norms, radii)}
