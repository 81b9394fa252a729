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
from deqkit.solvers.base import STOP_MODES, FlatMap, SolveInfo, StopMode, is_transformed

LINEAR_SOLVERS = {"gmres": GMRES, **SOLVERS}


@dataclass(frozen=True)
class IFT(BackwardEstimator):
    """Implicit-function-theorem gradient; ``solver`` solves the adjoint system (``"gmres"`` or a fixed-point solver).

    ``tol=None`` with a fixed-point solver runs exactly ``max_iter`` adjoint steps: no data-dependent control
    flow, so the backward compiles under ``torch.compile(fullgraph=True)``.
    """

    solver: str | Solver | GMRES = "gmres"
    tol: float | None = 1e-6
    max_iter: int = 50
    stop_mode: StopMode = "rel"

    def __post_init__(self) -> None:
        if isinstance(self.solver, str) and self.solver not in LINEAR_SOLVERS:
            raise unknown_choice("IFT linear solver", self.solver, LINEAR_SOLVERS)
        if not (isinstance(self.max_iter, int) and self.max_iter >= 1):
            raise ConfigError(f"IFT(max_iter={self.max_iter!r}) is invalid; max_iter must be an integer >= 1")
        if self.tol is None and (self.solver == "gmres" or isinstance(self.solver, GMRES)):
            raise ConfigError("IFT(tol=None) needs a fixed-point adjoint solver, e.g. IFT(solver='iteration', tol=None)")
        if self.tol is not None and not self.tol > 0:
            raise ConfigError(f"IFT(tol={self.tol}) is invalid; tol must be > 0, or None for a fixed step count")
        if self.stop_mode not in STOP_MODES:
            raise unknown_choice("stop_mode", self.stop_mode, STOP_MODES)

    def attach(self, f: FlatMap, z_star: torch.Tensor) -> torch.Tensor:
        if torch.compiler.is_compiling() or is_transformed(z_star):
            # Inside torch.func transforms requires_grad_ is not allowed: the backward re-linearises f
            # at z* with torch.func.vjp instead of reusing the recorded graph.
            return _AdjointIdentity.apply(f(z_star), z_star, self, f)
        z_in = z_star.detach().requires_grad_()
        z_out = f(z_in)
        if not z_out.requires_grad:  # f has no trainable dependence: nothing to differentiate
            return z_out
        return _AdjointIdentity.apply(z_out, z_in, self, None)

    def solve_adjoint(self, vjp, v: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        """g with g = Jᵀg + v, given ``vjp(g) = Jᵀg`` on [B, D]."""
        solver = GMRES() if self.solver == "gmres" else self.solver
        if isinstance(solver, GMRES):
            return solver.solve(lambda g: g - vjp(g), v, tol=self.tol, max_iter=self.max_iter, stop_mode=self.stop_mode)
        solver = resolve_solver(solver)
        return solver.solve(lambda g: vjp(g) + v, v, tol=self.tol, max_iter=self.max_iter, stop_mode=self.stop_mode)


def _nested_differentiation() -> bool:
    """True when more than one torch.func grad/jvp transform is active."""
    from torch._functorch.pyfunctorch import retrieve_all_functorch_interpreters

    kinds = [str(i.key()) for i in retrieve_all_functorch_interpreters()]
    return sum(k.endswith(("Grad", "Jvp")) for k in kinds) > 1


class _AdjointIdentity(torch.autograd.Function):
    """Identity forward; backward replaces ∂ℓ/∂z* by the adjoint solution g."""

    generate_vmap_rule = True

    @staticmethod
    def forward(z_out: torch.Tensor, z_in: torch.Tensor, estimator: IFT, f: FlatMap | None) -> torch.Tensor:
        return z_out.view_as(z_out)

    @staticmethod
    def setup_context(ctx, inputs, output) -> None:
        z_out, z_in, estimator, f = inputs
        ctx.save_for_backward(z_out, z_in)
        ctx.estimator, ctx.f = estimator, f

    @staticmethod
    def backward(ctx, v: torch.Tensor):
        # create_graph=True turns grad mode on here; torch.func.grad does too (v is then a wrapped tensor),
        # and a second grad/jvp transform on the stack means a derivative of this gradient is wanted.
        # (Under torch.compile the backward is traced ahead of time, where neither check can be read.)
        compiling = torch.compiler.is_compiling()
        if not compiling and ((torch.is_grad_enabled() and not is_transformed(v)) or _nested_differentiation()):
            raise RuntimeError(
                "double backward through deqkit's IFT gradient is not supported (it would be silently wrong); "
                "use backward='unrolled' or Neumann(k) / Phantom(k) for higher-order derivatives"
            )
        z_out, z_in = ctx.saved_tensors
        if ctx.f is None:

            def vjp(g: torch.Tensor) -> torch.Tensor:
                return torch.autograd.grad(z_out, z_in, g, retain_graph=True)[0]

        else:
            _, vjp_fn = torch.func.vjp(ctx.f, z_in.detach())
            vjp = lambda g: vjp_fn(g)[0]  # noqa: E731

        g, _ = ctx.estimator.solve_adjoint(vjp, v)
        return g, None, None, None
