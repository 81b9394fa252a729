"""Batched restarted GMRES for the per-sample linear systems of implicit differentiation.

Solves A x = b for every sample of a ``[B, D]`` batch at once, where ``matvec`` applies a block-diagonal A
(one block per sample), e.g. A = I − Jᵀ for the IFT adjoint system. The small least-squares problem of each
Arnoldi step is solved with a pseudo-inverse so that samples that already converged (Krylov breakdown) stay
put while the others go on.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import torch

from deqkit.errors import ConfigError
from deqkit.solvers.base import SolveInfo, StopMode, is_transformed


@dataclass(frozen=True)
class GMRES:
    """GMRES restarted every ``restart`` matrix-vector products (memory: ``restart`` vectors per sample)."""

    restart: int = 20

    def __post_init__(self) -> None:
        if not (isinstance(self.restart, int) and self.restart >= 1):
            raise ConfigError(f"GMRES(restart={self.restart!r}) is invalid; restart must be an integer >= 1")

    @torch.compiler.disable  # data-dependent loop: run eagerly under torch.compile
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
        batch, tiny = b.shape[0], torch.finfo(b.dtype).tiny
        b_norm = torch.linalg.vector_norm(b, dim=1)
        threshold = tol * b_norm if stop_mode == "rel" else torch.full_like(b_norm, tol)
        scale = b_norm.clamp_min(torch.finfo(b.dtype).tiny) if stop_mode == "rel" else torch.ones_like(b_norm)
        x = torch.zeros_like(b)
        r = b
        nfe = torch.zeros(batch, dtype=torch.long, device=b.device)
        done = torch.linalg.vector_norm(r, dim=1) <= threshold
        trace: list[torch.Tensor] = []
        used = 0
        while used < max_iter and (is_transformed(done) or not bool(done.all())):
            beta = torch.linalg.vector_norm(r, dim=1)
            basis = [r / beta.clamp_min(tiny)[:, None]]
            columns: list[torch.Tensor] = []  # column j of the Hessenberg matrix, [B, j + 2]
            y = None
            for j in range(min(self.restart, max_iter - used)):
                w = matvec(basis[j])
                used += 1
                nfe = nfe + (~done).long()
                entries = []
                for v in basis:  # modified Gram-Schmidt
                    h = (w * v).sum(1)
                    entries.append(h)
                    w = w - h[:, None] * v
                h_next = torch.linalg.vector_norm(w, dim=1)
                columns.append(torch.stack(entries + [h_next], 1))
                breakdown = h_next <= 1e-12 * beta.clamp_min(tiny)
                basis.append(torch.where(breakdown[:, None], 0.0, w / h_next.clamp_min(tiny)[:, None]))
                # Built without in-place writes so that torch.func transforms can trace it.
                small = torch.stack([torch.nn.functional.pad(c, (0, j + 2 - c.shape[1])) for c in columns], 2)
                rhs = torch.nn.functional.pad(beta[:, None], (0, j + 1))
                y = (torch.linalg.pinv(small) @ rhs[:, :, None]).squeeze(2)
                res = torch.linalg.vector_norm(rhs - (small @ y[:, :, None]).squeeze(2), dim=1)
                done = done | (res <= threshold)
                trace.append(res / scale)
                if not is_transformed(done) and bool(done.all()):
                    break
            x = x + torch.einsum("bk,kbd->bd", y, torch.stack(basis[: y.shape[1]]))
            r = b - matvec(x)
        residual = torch.linalg.vector_norm(b - matvec(x), dim=1) if used else torch.linalg.vector_norm(r, dim=1)
        converged = residual <= threshold * (1 + 1e-6) + torch.finfo(b.dtype).eps * b_norm
        trace_t = torch.stack(trace) if trace else (residual / scale)[None]
        info = SolveInfo(
            nfe=nfe,
            residual=residual / scale,
            converged=converged,
            diverged=~torch.isfinite(residual),
            trace=trace_t.detach(),
        )
        return x, info
