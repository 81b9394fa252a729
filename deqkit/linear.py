"""Batched restarted GMRES for the per-sample linear systems of implicit differentiation.

Solves A x = b for every sample of a ``[B, D]`` batch at once, where ``matvec`` applies a block-diagonal A
(one block per sample), e.g. A = I − Jᵀ for the IFT adjoint system. Each Arnoldi step updates a QR factorisation
of the Hessenberg matrix by Givens rotations, which gives every sample's residual norm for free; samples
whose Krylov space is exhausted get unit pivots and stay put while the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from deqkit.errors import CheckedOptions, ConfigError
from deqkit.solvers.base import SolveInfo, StopMode, eager_under_compile, is_transformed


@dataclass(frozen=True)
class GMRES(CheckedOptions):
    """GMRES restarted every ``restart`` matrix-vector products (memory: ``restart`` vectors per sample)."""

    restart: int = 20

    def __post_init__(self) -> None:
        if not (isinstance(self.restart, int) and self.restart >= 1):
            raise ConfigError(f"GMRES(restart={self.restart!r}) is invalid; restart must be an integer >= 1")

    @eager_under_compile  # data-dependent loop: run eagerly under torch.compile
    def solve(
        self,
        matvec: Callable[[torch.Tensor], torch.Tensor],
        b: torch.Tensor,
        *,
        tol: float,
        max_iter: int,
        stop_mode: StopMode = "rel",
    ) -> tuple[torch.Tensor, SolveInfo]:
        """x with ‖b − A x‖ ≤ tol (abs) or ≤ tol·‖b‖ (rel) per sample, within ``max_iter`` products."""
        batch, tiny, eps = b.shape[0], torch.finfo(b.dtype).tiny, torch.finfo(b.dtype).eps
        b_norm = torch.linalg.vector_norm(b, dim=1)
        threshold = tol * b_norm if stop_mode == "rel" else torch.full_like(b_norm, tol)
        scale = b_norm.clamp_min(tiny) if stop_mode == "rel" else torch.ones_like(b_norm)
        x, r = torch.zeros_like(b), b
        res = b_norm
        nfe = torch.zeros(batch, dtype=torch.long, device=b.device)
        done = res <= threshold
        trace: list[torch.Tensor] = []
        used = 0
        while used < max_iter and (is_transformed(done) or not bool(done.all())):
            if used:
                r = b - matvec(x)  # the true residual at each restart (counted as a product)
                used += 1
                nfe = nfe + (~done).long()
            beta = torch.linalg.vector_norm(r, dim=1)
            basis = [r / beta.clamp_min(tiny)[:, None]]
            rotations: list[tuple[torch.Tensor, torch.Tensor]] = []
            columns: list[torch.Tensor] = []  # columns of the triangular factor R, [B, j + 1] each
            g = [beta]  # the rotated right-hand side β e₁; |g[j + 1]| is the residual norm
            for j in range(min(self.restart, max_iter - used)):
                w = matvec(basis[j])
                used += 1
                nfe = nfe + (~done).long()
                w_norm = torch.linalg.vector_norm(w, dim=1)
                h = [torch.zeros_like(beta) for _ in basis]
                for _ in range(2):  # modified Gram-Schmidt, twice: one pass loses orthogonality in float32
                    for i, v in enumerate(basis):
                        c = (w * v).sum(1)
                        h[i] = h[i] + c
                        w = w - c[:, None] * v
                h_next = torch.linalg.vector_norm(w, dim=1)
                breakdown = h_next <= 10 * eps * w_norm  # nothing left but rounding: the Krylov space is exhausted
                basis.append(torch.where(breakdown[:, None], 0.0, w / h_next.clamp_min(tiny)[:, None]))
                for i, (c, s_) in enumerate(rotations):  # earlier Givens rotations, then a new one
                    h[i], h[i + 1] = c * h[i] + s_ * h[i + 1], c * h[i + 1] - s_ * h[i]
                radius = torch.sqrt(h[j] ** 2 + h_next**2)
                safe = radius > 0
                c = torch.where(safe, h[j] / radius.clamp_min(tiny), 1.0)
                s_ = torch.where(safe, h_next / radius.clamp_min(tiny), 0.0)
                rotations.append((c, s_))
                h[j] = torch.where(safe, radius, 1.0)  # a zero column (exhausted Krylov space) gets a unit pivot
                g.append(-s_ * g[j])
                g[j] = c * g[j]
                columns.append(torch.stack(h[: j + 1], 1))
                res = g[j + 1].abs()
                done = done | (res <= threshold)
                trace.append(res / scale)
                if not is_transformed(done) and bool(done.all()):
                    break
            k = len(columns)
            if k == 0:  # the budget ran out on the restart product
                break
            upper = torch.stack([torch.nn.functional.pad(col, (0, k - col.shape[1])) for col in columns], 2)
            y = torch.linalg.solve_triangular(upper, torch.stack(g[:k], 1)[:, :, None], upper=True).squeeze(2)
            x = x + torch.einsum("bk,kbd->bd", y, torch.stack(basis[:k]))
        # Report the true residual (one more product): the Givens estimate drifts below it in float32.
        if used:
            residual = torch.linalg.vector_norm(b - matvec(x), dim=1)
            nfe = nfe + 1
        else:
            residual = res
        converged = residual <= threshold
        trace_t = torch.stack(trace) if trace else (residual / scale)[None]
        info = SolveInfo(
            nfe=nfe,
            residual=residual / scale,
            converged=converged,
            diverged=~torch.isfinite(residual),
            trace=trace_t.detach(),
        )
        return x, info
