"""Exact implicit gradients by the implicit function theorem.

At z* = f(z*), dℓ/dθ = gᵀ ∂f/∂θ where g solves the adjoint system g = Jᵀg + ∂ℓ/∂z* (J = ∂f/∂z at z*).
Forward, f is applied once to the detached z* to record ∂f/∂θ; backward, an identity autograd node turns
the incoming ∂ℓ/∂z* into g with a linear solver whose matrix-vector product is one VJP through that record.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from deqkit.backward.base import BackwardEstimator
from deqkit.errors import ConfigError, unknown_choice
from deqkit.linear import GMRES
from deqkit.solvers import SOLVERS, Solver, resolve_solver
from deqkit.solvers.base import STOP_MODES, FlatMap, SolveInfo, StopMode

LINEAR_SOLVERS = {"gmres": GMRES, **SOLVERS}


@dataclass(frozen=True)
class IFT(BackwardEstimator):
    """Implicit-function-theorem gradient; ``solver`` solves the adjoint system (``"gmres"`` or a fixed-point solver)."""

    solver: str | Solver | GMRES = "gmres"
    tol: float = 1e-6
    max_iter: int = 50
    stop_mode: StopMode = "rel"

    def __post_init__(self) -> None:
        if isinstance(self.solver, str) and self.solver not in LINEAR_SOLVERS:
            raise unknown_choice("IFT linear solver", self.solver, LINEAR_SOLVERS)
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise ConfigError(f"IFT(max_iter={self.max_iter!r}) is invalid; max_iter must be an integer >= 1")
        if not self.tol > 0:
            raise ConfigError(f"IFT(tol={self.tol}) is invalid; tol must be > 0")
        if self.stop_mode not in STOP_MODES:
            raise unknown_choice("stop_mode", self.stop_mode, STOP_MODES)

    def attach(self, f: FlatMap, z_star: torch.Tensor) -> torch.Tensor:
        z_in = z_star.detach().requires_grad_()
        z_out = f(z_in)
        if not z_out.requires_grad:  # f has no trainable dependence: nothing to differentiate
            return z_out
        return _AdjointIdentity.apply(z_out, z_in, self)

    def solve_adjoint(self, vjp, v: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        """g with g = Jᵀg + v, given ``vjp(g) = Jᵀg`` on [B, D]."""
        solver = GMRES() if self.solver == "gmres" else self.solver
        if isinstance(solver, GMRES):
            return solver.solve(lambda g: g - vjp(g), v, tol=self.tol, max_iter=self.max_iter, stop_mode=self.stop_mode)
        solver = resolve_solver(solver)
        return solver.solve(lambda g: vjp(g) + v, v, tol=self.tol, max_iter=self.max_iter, stop_mode=self.stop_mode)


class _AdjointIdentity(torch.autograd.Function):
    """Identity forward; backward replaces ∂ℓ/∂z* by the adjoint solution g."""

    @staticmethod
    def forward(ctx, z_out: torch.Tensor, z_in: torch.Tensor, estimator: IFT) -> torch.Tensor:
        ctx.save_for_backward(z_out, z_in)
        ctx.estimator = estimator
        return z_out.view_as(z_out)

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        if torch.is_grad_enabled():
            raise RuntimeError(
                "double backward through deqkit's IFT gradient is not supported (it would be silently wrong); "
                "use backward='unrolled' or Neumann(k) / Phantom(k) for higher-order derivatives"
            )
        z_out, z_in = ctx.saved_tensors

        def vjp(g: torch.Tensor) -> torch.Tensor:
            return torch.autograd.grad(z_out, z_in, g, retain_graph=True)[0]

        g, _ = ctx.estimator.solve_adjoint(vjp, v)
        return g, None, None
