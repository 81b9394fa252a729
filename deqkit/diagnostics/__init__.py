"""Diagnostics of fixed-point stability: Jacobian spectra at the fixed point and residual histories of solves.

Instability in iterative refinement shows as a spectral norm / radius of ∂f/∂z at z* creeping towards 1
and as residuals that stop falling; these functions make both visible for any fixed-point step.
"""

from deqkit.diagnostics.memory import saved_tensor_bytes
from deqkit.diagnostics.report import diagnose, diagnose_batches
from deqkit.diagnostics.residuals import (
    active_length,
    convergence_rate,
    fraction_converged,
    nfe_histogram,
    residual_curves,
    summarize,
)
from deqkit.diagnostics.spectral import jacobian_frobenius, spectral_norm, spectral_radius

__all__ = [
    "active_length",
    "convergence_rate",
    "diagnose",
    "diagnose_batches",
    "fraction_converged",
    "jacobian_frobenius",
    "nfe_histogram",
    "residual_curves",
    "saved_tensor_bytes",
    "spectral_norm",
    "spectral_radius",
    "summarize",
]
