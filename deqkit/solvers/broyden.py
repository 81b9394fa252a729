"""Limited-memory ("good") Broyden's method for the root of g(z) = f(z) − z.

The inverse Jacobian of g is approximated as −I + Σᵢ uᵢ vᵢᵀ over the secant updates so far (Sherman–Morrison
form, as in Bai et al.'s DEQ solvers): all of them by default (``m=None``, memory grows with the iterations
like torchdeq's), or a window of the last ``m`` to bound memory. A quasi-Newton step that makes the residual
grow more than ``growth`` times is rejected and the sample's memory is reset (see ``safeguard``); the
residual of Broyden's method is not monotone, so only a large rise is treated as a failed step.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deqkit.errors import ConfigError
from deqkit.solvers.base import Solver
from deqkit.solvers.safeguard import Safeguard, write_slot


@dataclass(frozen=True)
class Broyden(Solver):
    """Broyden with all (``m=None``) or the last ``m`` rank-one updates and step size ``beta``."""

    m: int | None = None
    beta: float = 1.0
    safeguard: bool = True
    growth: float = 10.0  # a step may raise the residual this much before it is rejected

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.m is not None and not (isinstance(self.m, int) and not isinstance(self.m, bool) and self.m >= 1):
            raise ConfigError(f"Broyden(m={self.m!r}) is invalid; m must be an integer >= 1, or None for no limit")
        if not 0.0 < self.beta <= 1.0:
            raise ConfigError(f"Broyden(beta={self.beta}) is out of range; beta must be in (0, 1]")
        if not self.growth >= 1.0:
            raise ConfigError(f"Broyden(growth={self.growth}) must be >= 1")

    def _start(self, z0: torch.Tensor) -> "_Memory":
        return _Memory(z0, self.m, Safeguard(self.growth) if self.safeguard else None)

    def _update(self, mem: "_Memory", z: torch.Tensor, fz: torch.Tensor, abs_res: torch.Tensor) -> torch.Tensor:
        g = fz - z
        rejected = mem.guard.check(z, g, abs_res) if mem.guard is not None else None
        if mem.prev_z is not None:
            dz, dg = z - mem.prev_z, g - mem.prev_g
            inv_dg = mem.apply(dg)  # B⁻¹ Δg
            v = mem.apply_transposed(dz)  # B⁻ᵀ Δz
            denom = (v * dg).sum(1, keepdim=True)
            usable = denom.abs() > torch.finfo(z.dtype).tiny
            # Divide by 1 where the secant is degenerate (e.g. a frozen sample, Δz = Δg = 0): a 0/0 here
            # would be masked in the value but still send NaN through autograd when the solve is unrolled.
            u = (dz - inv_dg) / torch.where(usable, denom, 1.0)
            valid = usable & torch.isfinite(u).all(1, keepdim=True)
            if rejected is not None:
                valid = valid & ~rejected[:, None]
            mem.push(torch.where(valid, u, 0.0), torch.where(valid, v, 0.0))
            if rejected is not None:
                mem.forget(rejected)
        step = z - self.beta * mem.apply(g)  # Newton step −B⁻¹g (= +g while the memory is empty)
        if rejected is not None:
            step = torch.where(rejected[:, None], mem.guard.fallback(self.beta), step)
            mem.prev_z, mem.prev_g = mem.guard.z, mem.guard.g
        else:
            mem.prev_z, mem.prev_g = z, g
        return step


class _Memory:
    """The rank-one updates, ``us``/``vs`` of shape ``[B, n, D]``; B⁻¹x = −x + Σ uᵢ (vᵢ·x).

    With a window (``m``) n = m and the oldest update is overwritten; without one (``m=None``) n grows by
    one per update.
    """

    def __init__(self, z0: torch.Tensor, m: int | None, guard: Safeguard | None):
        batch, dim = z0.shape
        self.us = z0.new_zeros(batch, m or 0, dim)
        self.vs = z0.new_zeros(batch, m or 0, dim)
        self.m, self.count, self.guard = m, 0, guard
        self.prev_z: torch.Tensor | None = None
        self.prev_g: torch.Tensor | None = None

    def apply(self, x: torch.Tensor) -> torch.Tensor:
        return -x + torch.einsum("bmd,bm->bd", self.us, torch.einsum("bmd,bd->bm", self.vs, x))

    def apply_transposed(self, x: torch.Tensor) -> torch.Tensor:
        return -x + torch.einsum("bmd,bm->bd", self.vs, torch.einsum("bmd,bd->bm", self.us, x))

    def push(self, u: torch.Tensor, v: torch.Tensor) -> None:
        if self.m is None:
            self.us = torch.cat([self.us, u[:, None]], dim=1)
            self.vs = torch.cat([self.vs, v[:, None]], dim=1)
            self.count += 1
            return
        slot = self.count % self.m
        self.us = write_slot(self.us, slot, u)
        self.vs = write_slot(self.vs, slot, v)
        self.count += 1

    def select(self, keep: torch.Tensor) -> None:
        """Keep the samples at positions ``keep`` only."""
        self.us, self.vs = self.us.index_select(0, keep), self.vs.index_select(0, keep)
        if self.prev_z is not None:
            self.prev_z, self.prev_g = self.prev_z.index_select(0, keep), self.prev_g.index_select(0, keep)
        if self.guard is not None:
            self.guard.select(keep)

    def forget(self, samples: torch.Tensor) -> None:
        """Reset the memory of the given samples [B] to the identity guess."""
        keep = (~samples).to(self.us.dtype)[:, None, None]
        self.us = self.us * keep
        self.vs = self.vs * keep
