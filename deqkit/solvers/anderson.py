"""Anderson acceleration (type II, Walker & Ni 2011) with scale-relative regularisation and a safeguard.

The next iterate mixes the last ``m`` iterates with weights α (Σα = 1) minimising ‖Σ αᵢ gᵢ‖, gᵢ = f(zᵢ) − zᵢ.
The normal equations are regularised by ``regularization`` × ‖gᵢ‖² on each diagonal entry, so the
regulariser shrinks with the residuals. (torchdeq adds a fixed 1e-4, which swamps tiny residuals at tight
tolerances and reduces mixing to plain averaging, i.e. slower than plain iteration.)
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deqkit.errors import ConfigError
from deqkit.solvers.base import Solver
from deqkit.solvers.safeguard import Safeguard, write_slot


@dataclass(frozen=True)
class Anderson(Solver):
    """Anderson mixing over a window of ``m`` iterates, damping ``beta``; ``safeguard`` rejects harmful steps."""

    m: int = 5
    beta: float = 1.0
    regularization: float = 1e-6
    safeguard: bool = True

    def __post_init__(self) -> None:
        super().__post_init__()
        if not (isinstance(self.m, int) and self.m >= 1):
            raise ConfigError(f"Anderson(m={self.m!r}) is invalid; m must be an integer >= 1")
        if not 0.0 < self.beta <= 1.0:
            raise ConfigError(f"Anderson(beta={self.beta}) is out of range; beta must be in (0, 1]")
        if not self.regularization >= 0.0:
            raise ConfigError(f"Anderson(regularization={self.regularization}) must be >= 0")

    def _start(self, z0: torch.Tensor) -> "_Window":
        return _Window(z0, self.m, Safeguard(growth=1.0) if self.safeguard else None)

    def _update(self, state: "_Window", z: torch.Tensor, fz: torch.Tensor, abs_res: torch.Tensor) -> torch.Tensor:
        g = fz - z
        n = state.push(z, g)
        if n == 1:
            step = z + self.beta * g
        else:
            xs, gs = state.xs[:, :n], state.gs[:, :n]  # [B, n, D]
            gram = torch.bmm(gs, gs.transpose(1, 2))  # [B, n, n]
            # Tikhonov term proportional to each ‖gᵢ‖², so it shrinks with the residuals (and is not swamped
            # by the oldest, largest one as a window-wide scale would be).
            diagonal = gram.diagonal(dim1=1, dim2=2)
            gram = gram + torch.diag_embed(self.regularization * diagonal + torch.finfo(gram.dtype).tiny)
            ones = torch.ones(gram.shape[0], n, 1, dtype=gram.dtype, device=gram.device)
            y, _ = torch.linalg.solve_ex(gram, ones)
            alpha = y / y.sum(1, keepdim=True)  # [B, n, 1]
            mixed = (alpha * (xs + self.beta * gs)).sum(1)
            ok = torch.isfinite(alpha).all(1)  # a singular window falls back to a plain step
            step = torch.where(ok, mixed, z + self.beta * g)
        if state.guard is not None:
            rejected = state.guard.check(z, g, abs_res)
            step = torch.where(rejected[:, None], state.guard.fallback(self.beta), step)
        return step


class _Window:
    """Ring buffers of the last m iterates and residuals, ``[B, m, D]`` each."""

    def __init__(self, z0: torch.Tensor, m: int, guard: Safeguard | None):
        batch, dim = z0.shape
        self.xs = z0.new_zeros(batch, m, dim)
        self.gs = z0.new_zeros(batch, m, dim)
        self.m, self.count, self.guard = m, 0, guard

    def select(self, keep: torch.Tensor) -> None:
        """Keep the samples at positions ``keep`` only."""
        self.xs, self.gs = self.xs.index_select(0, keep), self.gs.index_select(0, keep)
        if self.guard is not None:
            self.guard.select(keep)

    def push(self, z: torch.Tensor, g: torch.Tensor) -> int:
        """Store (z, g) over the oldest entry; returns how many entries are filled."""
        slot = self.count % self.m
        self.xs = write_slot(self.xs, slot, z)
        self.gs = write_slot(self.gs, slot, g)
        self.count += 1
        return min(self.count, self.m)
