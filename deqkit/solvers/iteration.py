"""Plain (optionally damped) fixed-point iteration: z ← z + β (f(z) − z)."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deqkit.errors import ConfigError
from deqkit.solvers.base import Solver


@dataclass(frozen=True)
class Iteration(Solver):
    """Picard iteration with damping ``beta`` (1.0 = plain z ← f(z)). Converges for contractive f."""

    beta: float = 1.0
    uses_residual = False  # the step is f(z) alone: a fixed-count loop computes residuals in chunks

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 0.0 < self.beta <= 1.0:
            raise ConfigError(f"Iteration(beta={self.beta}) is out of range; beta must be in (0, 1]")

    def _update(self, state: object, z: torch.Tensor, fz: torch.Tensor, abs_res: torch.Tensor | None) -> torch.Tensor:
        return fz if self.beta == 1.0 else z + self.beta * (fz - z)
