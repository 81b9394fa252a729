"""Phantom gradients (Geng et al., "On Training Implicit Models", NeurIPS 2021).

From the detached fixed point, take k damped steps z ← (1 − λ) z + λ f(z) and backpropagate through them;
damping λ < 1 trades bias for a better-conditioned, cheaper gradient than exact IFT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deqkit.backward.base import BackwardEstimator
from deqkit.errors import ConfigError
from deqkit.solvers.base import FlatMap


@dataclass(frozen=True)
class Phantom(BackwardEstimator):
    """``k`` damped steps with damping ``damping`` (λ in the paper) from the detached fixed point."""

    k: int = 5
    damping: float = 0.5

    def __post_init__(self) -> None:
        if not (isinstance(self.k, int) and self.k >= 1):
            raise ConfigError(f"Phantom(k={self.k!r}) is invalid; k must be an integer >= 1")
        if not 0.0 < self.damping <= 1.0:
            raise ConfigError(f"Phantom(damping={self.damping}) is out of range; damping must be in (0, 1]")

    def attach(self, f: FlatMap, z_star: torch.Tensor) -> torch.Tensor:
        z = z_star.detach()
        for _ in range(self.k):
            z = z + self.damping * (f(z) - z)
        return z
