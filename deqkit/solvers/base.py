"""What every forward solver shares: the result record and per-sample convergence bookkeeping.

Solvers work on the flat ``[B, D]`` view of a state. Samples are independent: each one stops (and stops
counting function evaluations) as soon as it converges or diverges, and returns its best iterate.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable, Literal

import torch

FlatMap = Callable[[torch.Tensor], torch.Tensor]
StopMode = Literal["abs", "rel"]
STOP_MODES = ("abs", "rel")
_EPS = 1e-12


@dataclass(frozen=True)
class SolveInfo:
    """What a solve did, per sample.

    nfe: LongTensor [B], function evaluations each sample used.
    residual: [B], residual of the returned iterate in the stop mode (abs: ‖f(z)−z‖, rel: ‖f(z)−z‖/‖f(z)‖).
    converged: BoolTensor [B], residual ≤ tol.  diverged: BoolTensor [B], NaN/Inf or an exploding residual.
    trace: [T, B], residual after each iteration; a stopped sample repeats its last value.
    """

    nfe: torch.Tensor
    residual: torch.Tensor
    converged: torch.Tensor
    diverged: torch.Tensor
    trace: torch.Tensor

    @property
    def iterations(self) -> int:
        """Number of loop iterations the batch ran (the NFE of the slowest sample)."""
        return self.trace.shape[0]


def is_transformed(tensor: torch.Tensor) -> bool:
    """True inside torch.func transforms (e.g. vmap), where tensors cannot be read by Python control flow."""
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def relative(abs_res: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
    """‖f(z) − z‖ / ‖f(z)‖ per sample, from the abs residual [B] and f(z) [B, D]."""
    return abs_res / (torch.linalg.vector_norm(fz, dim=1) + _EPS)


class Progress:
    """Per-sample residuals, stopping, best iterate and NFE over one solve.

    ``observe(z, fz)`` is called once per evaluation of ``f``; ``next_state`` freezes samples that stopped at
    their best iterate so they stop changing. Bookkeeping is kept to a few vector ops per iteration.
    """

    def __init__(self, z0: torch.Tensor, tol: float | None, stop_mode: StopMode, divergence_ratio: float):
        batch = z0.shape[0]
        self.tol = tol
        self.rel = stop_mode == "rel"
        self.divergence_ratio = divergence_ratio
        self.active = torch.ones(batch, dtype=torch.bool, device=z0.device)
        self.best_z = z0
        self.best_res = torch.full((batch,), float("inf"), dtype=z0.real.dtype, device=z0.device)
        self.limit: torch.Tensor | None = None
        self.abs_res = self.best_res
        self.residuals: list[torch.Tensor] = []
        self.abs_residuals: list[torch.Tensor] = []
        self.actives: list[torch.Tensor] = []

    def observe(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """Record the residual of ``z`` (given ``fz = f(z)``); returns the abs residual ‖f(z) − z‖ [B]."""
        abs_res = torch.linalg.vector_norm(fz - z, dim=1)
        res = relative(abs_res, fz) if self.rel else abs_res
        self.actives.append(self.active)
        self.residuals.append(res)
        self.abs_residuals.append(abs_res)
        improved = res < self.best_res  # False for NaN; a frozen sample re-evaluates its best, never improves
        self.best_res = torch.where(improved, res, self.best_res)
        self.best_z = torch.where(improved[:, None], z, self.best_z)
        if self.limit is None:
            # An exploding ‖f(z) − z‖ is one far above the first one, whatever the stop mode (the relative
            # residual of a blow-up stays near 1); NaN/Inf fail every comparison below.
            self.limit = abs_res * self.divergence_ratio
        keep_going = abs_res <= self.limit
        if self.tol is not None:
            keep_going = keep_going & (res > self.tol)
        self.active = self.active & keep_going
        self.abs_res = abs_res
        return abs_res

    def finished(self) -> bool:
        # Under torch.func transforms (vmap, grad) a tensor cannot steer Python control flow: run all
        # max_iter iterations there; stopped samples are frozen either way, so the result is the same.
        if is_transformed(self.active):
            return False
        return not bool(self.active.any())

    def next_state(self, z_next: torch.Tensor) -> torch.Tensor:
        """Samples still running move to ``z_next``; stopped ones stay at their best iterate."""
        return torch.where(self.active[:, None], z_next, self.best_z)

    def result(self) -> tuple[torch.Tensor, SolveInfo]:
        """The best iterate of every sample and the record of the solve."""
        actives = torch.stack(self.actives)  # [T, B]: was the sample running at iteration t
        residuals = torch.stack(self.residuals).detach()
        nfe = actives.sum(0)
        # A stopped sample's trace repeats its last observed residual.
        last = residuals.gather(0, (nfe - 1).clamp(min=0)[None]).squeeze(0)
        trace = torch.where(actives, residuals, last[None])
        best_res = self.best_res.detach()
        finite = torch.isfinite(best_res)
        converged = (best_res <= self.tol) if self.tol is not None else torch.zeros_like(finite)
        # Only NaN/Inf or an exploding residual stop a sample that has not converged.
        diverged = ~converged & ~(torch.stack(self.abs_residuals) <= self.limit[None]).all(0)
        residual = torch.where(finite, best_res, last)
        info = SolveInfo(nfe=nfe.long(), residual=residual, converged=converged, diverged=diverged, trace=trace)
        return self.best_z, info


class Solver:
    """A forward solver: finds z with f(z) = z for every sample of a flat ``[B, D]`` batch.

    A solver is an immutable object holding its algorithm's parameters; it implements ``_start`` (fresh
    per-solve state) and ``_update`` (the next iterate from z, f(z) and the abs residual). ``solve`` runs
    the loop: ``tol=None`` means a fixed iteration count (exactly ``max_iter`` evaluations, last iterate
    returned, like a plain loop); otherwise each sample stops at convergence or divergence.
    """

    divergence_ratio: float = 1e4  # abs residual this many times the first one counts as divergence

    def _start(self, z0: torch.Tensor) -> object:
        return None

    def _update(self, state: object, z: torch.Tensor, fz: torch.Tensor, abs_res: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    @torch.compiler.disable  # a data-dependent loop: torch.compile runs it eagerly instead of recompiling
    def solve(
        self, f: FlatMap, z0: torch.Tensor, *, tol: float | None, max_iter: int, stop_mode: StopMode
    ) -> tuple[torch.Tensor, SolveInfo]:
        state, z = self._start(z0), z0
        update = self._update
        if torch.is_autocast_enabled(z0.device.type):  # f may run in bf16; the solver's algebra must not
            update = _without_autocast(update)
        if tol is None:  # the lean loop: two norms of bookkeeping per step, divided once at the end
            residuals, norms = [], []
            for _ in range(max_iter):
                fz = f(z)
                abs_res = torch.linalg.vector_norm(fz - z, dim=1)
                residuals.append(abs_res)
                if stop_mode == "rel":
                    norms.append(torch.linalg.vector_norm(fz, dim=1))
                z = update(state, z, fz, abs_res)
            return z, fixed_count_info(residuals, norms, z)
        progress = Progress(z0, tol, stop_mode, self.divergence_ratio)
        for _ in range(max_iter):
            fz = f(z)
            abs_res = progress.observe(z, fz)
            if progress.finished():
                break
            z = progress.next_state(update(state, z, fz, abs_res))
        return progress.result()


def _without_autocast(update):
    """Wrap a solver update so it runs with autocast off (Anderson's LU has no bf16 kernel)."""

    def wrapped(state: object, z: torch.Tensor, fz: torch.Tensor, abs_res: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):
            return update(state, z, fz, abs_res)

    return wrapped


def fixed_count_info(residuals: list[torch.Tensor], norms: list[torch.Tensor], z: torch.Tensor) -> SolveInfo:
    """Info for a fixed-count run from each step's ‖f(z) − z‖ (and ‖f(z)‖ in rel mode): nothing converged.

    The residual reported is that of the second-to-last iterate (the last step's size), which costs no
    extra evaluation of f.
    """
    trace = torch.stack(residuals).detach()
    if norms:
        trace = trace / (torch.stack(norms).detach() + _EPS)
    batch = z.shape[0]
    residual = trace[-1]
    finite = torch.isfinite(residual)  # NaN/Inf anywhere in the last step shows up in its residual
    return SolveInfo(
        nfe=torch.full((batch,), trace.shape[0], dtype=torch.long, device=z.device),
        residual=residual,
        converged=torch.zeros(batch, dtype=torch.bool, device=z.device),
        diverged=~finite,
        trace=trace,
    )
