"""Truncated Neumann-series gradients: apply f k times to the detached fixed point.

Backpropagating through z = f^k(z*) with z* detached gives vᵀ(I + J + … + J^{k−1}) ∂f/∂θ, the first k
terms of the implicit gradient vᵀ(I − J)⁻¹ ∂f/∂θ. k = 1 is the "implicit slot attention" / Jacobian-free
gradient of Chang et al. (2022) and Fung et al. (2022): O(1) memory whatever the number of iterations.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deqkit.backward.base import BackwardEstimator
from deqkit.errors import ConfigError
from deqkit.solvers.base import FlatMap


@dataclass(frozen=True)
class Neumann(BackwardEstimator):
    """Gradient through ``k`` applications of f from the detached fixed point (k = 1: one extra step)."""

    k: int = 1

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ConfigError(f"Neumann(k={self.k!r}) is invalid; k must be an integer >= 1")

    def attach(self, f: FlatMap, z_star: torch.Tensor) -> torch.Tensor:
        z = z_star.detach()
        for _ in range(self.k):
            z = f(z)
        return z
