"""What every forward solver shares: the result record and per-sample convergence bookkeeping.

Solvers work on the flat ``[B, D]`` view of a state. Samples are independent: each one stops (and stops
counting function evaluations) as soon as it converges or diverges, and returns its best iterate.
"""

from __future__ import annotations

import functools
import sys
from dataclasses import dataclass, field
from typing import Callable, ClassVar, Literal, TypeVar

import torch

from deqkit.errors import CheckedOptions, ConfigError

FlatMap = Callable[[torch.Tensor], torch.Tensor]
RowMap = Callable[[torch.Tensor, torch.Tensor], torch.Tensor]  # (z[rows], rows) -> f(z)[rows]
StopMode = Literal["abs", "rel"]
STOP_MODES = ("abs", "rel")
_EPS = 1e-12
_F = TypeVar("_F", bound=Callable)


def eager_under_compile(fn: _F) -> _F:
    """``torch.compiler.disable(fn)`` without importing ``torch._dynamo`` (1.4 s) before anything compiles.

    While ``torch._dynamo`` is not imported nothing can be compiling, and ``fn`` is called directly. Once it
    is, calls go through ``torch._dynamo.disable(fn)``; when dynamo traces a call of the wrapper, the
    ``_torchdynamo_disable`` mark makes it stop the graph there and run ``fn`` eagerly, as for a function
    decorated with ``torch.compiler.disable``.
    """
    disabled = None

    @functools.wraps(fn)
    def wrapper(*args, **kwargs):
        nonlocal disabled
        dynamo = sys.modules.get("torch._dynamo")
        if dynamo is None:
            return fn(*args, **kwargs)
        if disabled is None:
            disabled = dynamo.disable(fn)
        return disabled(*args, **kwargs)

    wrapper._torchdynamo_disable = True
    return wrapper


@dataclass(frozen=True)
class SolveInfo:
    """What a solve did, per sample.

    nfe: LongTensor [B], function evaluations each sample used.
    residual: [B], residual of the returned iterate in the stop mode (abs: ‖f(z)−z‖, rel: ‖f(z)−z‖/‖f(z)‖).
    converged: BoolTensor [B], residual ≤ tol.  diverged: BoolTensor [B], NaN/Inf or an exploding residual.
    trace: [T, B], residual after each iteration; a stopped sample repeats its last value.

    A fixed-count solve computes these fields when one of them is first read (``SolveInfo.deferred``), so a
    loop whose record nobody reads costs what a bare loop costs.
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

    @staticmethod
    def deferred(compute: Callable[[], "SolveInfo"]) -> "SolveInfo":
        """A record whose fields ``compute()`` fills in when one of them is first read."""
        info = object.__new__(_DeferredSolveInfo)
        object.__setattr__(info, "_compute", compute)
        return info


_FIELDS = ("nfe", "residual", "converged", "diverged", "trace")


class _DeferredSolveInfo(SolveInfo):
    """A ``SolveInfo`` computed on first access (``__getattr__`` runs only while a field is still missing)."""

    def __getattr__(self, name: str):
        compute = self.__dict__.get("_compute")
        if compute is None or name not in _FIELDS:
            raise AttributeError(f"{type(self).__name__!r} object has no attribute {name!r}")
        done = compute()
        for field in _FIELDS:
            object.__setattr__(self, field, getattr(done, field))
        del self.__dict__["_compute"]
        return self.__dict__[name]

    def __repr__(self) -> str:
        return "SolveInfo(" + ", ".join(f"{name}={getattr(self, name)!r}" for name in _FIELDS) + ")"


def is_transformed(tensor: torch.Tensor) -> bool:
    """True inside torch.func transforms (e.g. vmap), where tensors cannot be read by Python control flow.

    Always False while torch.compile traces (dynamo cannot call the check; it traces transforms itself).
    """
    if torch.compiler.is_compiling():
        return False
    return torch._C._functorch.is_functorch_wrapped_tensor(tensor)


def relative(abs_res: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
    """‖f(z) − z‖ / ‖f(z)‖ per sample, from the abs residual [B] and f(z) [B, D]."""
    return abs_res / (torch.linalg.vector_norm(fz, dim=1) + _EPS)


class Progress:
    """Per-sample residuals, stopping, best iterate and NFE over one solve.

    ``observe(z, fz)`` is called once per evaluation of ``f``; ``next_state`` freezes samples that stopped at
    their best iterate so they stop changing. After ``shrink(keep)`` the state (``active``, ``best_z``, ...)
    covers the samples ``rows`` only, so a compacted iteration costs what a solve of those samples costs;
    the whole-batch record is put together when it is read (``info``, ``best``).
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
        self.rows: torch.Tensor | None = None  # the samples the state covers (None: all)
        self.whole: tuple[torch.Tensor, ...] = ()  # (best_z, best_res, limit) of the whole batch while shrunk
        # per iteration: (rows, was running, residual, abs residual), over the samples ``rows``
        self.records: list[tuple[torch.Tensor | None, torch.Tensor, torch.Tensor, torch.Tensor]] = []

    def observe(self, z: torch.Tensor, fz: torch.Tensor) -> torch.Tensor:
        """Record the residual of ``z`` (given ``fz = f(z)``); returns the abs residual ‖f(z) − z‖."""
        abs_res = torch.linalg.vector_norm(fz - z, dim=1)
        res = relative(abs_res, fz) if self.rel else abs_res
        self.records.append((self.rows, self.active, res, abs_res))
        # False for NaN. Only running samples can improve: a stopped one is frozen at its best iterate.
        improved = (res < self.best_res) & self.active
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
        return abs_res

    def next_state(self, z_next: torch.Tensor) -> torch.Tensor:
        """Samples still running move to ``z_next``; stopped ones stay at their best iterate."""
        return torch.where(self.active[:, None], z_next, self.best_z)

    def shrink(self, keep: torch.Tensor) -> None:
        """Keep only the samples at positions ``keep`` (ascending) of the current ones in the state."""
        best_z, best_res, limit = self._whole()
        self.whole = (best_z if self.rows is not None else best_z.clone(), best_res, limit)  # written in place
        self.rows = keep if self.rows is None else self.rows.index_select(0, keep)
        self.active = self.active.index_select(0, keep)
        self.best_z, self.best_res, self.limit = (t.index_select(0, self.rows) for t in self.whole)

    def _whole(self) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(best_z, best_res, limit) of the whole batch, the current samples' rows written back."""
        if self.rows is None:
            return self.best_z, self.best_res, self.limit
        best_z, best_res, limit = self.whole
        best_z.index_copy_(0, self.rows, self.best_z)
        return best_z, best_res.index_copy(0, self.rows, self.best_res), limit

    def whole_state(self, z: torch.Tensor) -> torch.Tensor:
        """The whole batch's state with the current samples at ``z`` and the others at their best iterate."""
        return z if self.rows is None else self._whole()[0].index_copy(0, self.rows, z)

    def best(self) -> torch.Tensor:
        """The best iterate of every sample [B, D]."""
        return self._whole()[0]

    def ran(self, start: int = 0) -> int:
        """Iterations in which some sample was running, given that some was in the first ``start`` (a host
        synchronisation). Samples stop for good, so these are the first ones; a loop that checks for stopped
        samples every few iterations may have run more."""
        tail = [active.any() for _, active, _, _ in self.records[start:]]
        return start + (int(torch.stack(tail).sum()) if tail else 0)

    def info(self, iterations: int | None = None) -> SolveInfo:
        """The record of the solve over its first ``iterations`` (default: all)."""
        _, best_res, limit = self._whole()
        batch = best_res.shape[0]

        def spread(rows: torch.Tensor | None, values: torch.Tensor) -> torch.Tensor:
            # Samples outside ``rows`` had stopped: their entries are masked by ``actives`` below.
            return values if rows is None else values.new_zeros(batch).index_copy(0, rows, values)

        records = self.records[:iterations]
        actives = torch.stack([spread(r, a) for r, a, _, _ in records])  # [T, B]: was the sample running
        residuals = torch.stack([spread(r, res) for r, _, res, _ in records]).detach()
        abs_residuals = torch.stack([spread(r, res) for r, _, _, res in records])
        nfe = actives.sum(0)
        # A stopped sample's trace repeats its last observed residual.
        last = residuals.gather(0, (nfe - 1).clamp(min=0)[None]).squeeze(0)
        trace = torch.where(actives, residuals, last[None])
        best_res = best_res.detach()
        finite = torch.isfinite(best_res)
        converged = (best_res <= self.tol) if self.tol is not None else torch.zeros_like(finite)
        # Only NaN/Inf or an exploding residual stop a sample that has not converged.
        within = (abs_residuals <= limit[None]) | ~actives  # stopped samples: not looked at
        diverged = ~converged & ~within.all(0)
        residual = torch.where(finite, best_res, last)
        return SolveInfo(nfe=nfe.long(), residual=residual, converged=converged, diverged=diverged, trace=trace)


# Shrink the solve to the running samples once at most this fraction of its rows is still running;
# above it, gathering and scattering rows costs more than the work it saves.
COMPACT_BELOW = 0.75
# Matrix products over fewer rows than this round differently (MKL switches kernels below 4 rows), so
# a smaller set of running samples is padded with stopped ones to keep results bit-identical.
MIN_ROWS = 4
# A fixed-count plain iteration keeps its iterates (for the trace, computed when info is read) up to this size;
# a bigger run computes each step's residual as it goes.
KEEP_BYTES = 2**22


@dataclass(frozen=True)
class Solver(CheckedOptions):
    """A forward solver: finds z with f(z) = z for every sample of a flat ``[B, D]`` batch.

    A solver is an immutable object holding its algorithm's parameters; it implements ``_start`` (fresh
    per-solve state) and ``_update`` (the next iterate from z, f(z) and the abs residual). ``solve`` runs
    the loop: ``tol=None`` means a fixed iteration count (exactly ``max_iter`` evaluations, last iterate
    returned, like a plain loop); otherwise each sample stops at convergence or divergence.

    ``check_every``: a tolerance loop reads on the host whether any sample is still running (one
    synchronisation, which stalls a GPU's queue) every this many iterations; in between stopped samples stay
    frozen, so results are the same, and at most ``check_every − 1`` evaluations are spent after the last one
    stopped. A fixed-count loop never synchronises.
    """

    check_every: int = field(default=1, kw_only=True)

    divergence_ratio: ClassVar[float] = 1e4  # abs residual this many times the first one counts as divergence
    uses_residual: ClassVar[bool] = True  # _update reads ‖f(z) − z‖ (a fixed-count loop can then skip it)

    def __post_init__(self) -> None:
        if isinstance(self.check_every, bool) or not (isinstance(self.check_every, int) and self.check_every >= 1):
            name = type(self).__name__
            raise ConfigError(f"{name}(check_every={self.check_every!r}) is invalid; use an integer >= 1")

    def _start(self, z0: torch.Tensor) -> object:
        return None

    def _update(self, state: object, z: torch.Tensor, fz: torch.Tensor, abs_res: torch.Tensor) -> torch.Tensor:
        raise NotImplementedError

    def solve(
        self,
        f: FlatMap,
        z0: torch.Tensor,
        *,
        tol: float | None,
        max_iter: int,
        stop_mode: StopMode,
        f_rows: RowMap | None = None,
    ) -> tuple[torch.Tensor, SolveInfo]:
        """Solve from ``z0`` [B, D]. ``f_rows(z_sub, rows)``, when given, evaluates f on the samples ``rows``
        only (``z_sub = z[rows]``); the solve then shrinks to the running samples once enough have stopped
        (f, the update and the solver's state; the state needs a ``select(positions)`` method)."""
        update = self._update
        if torch.is_autocast_enabled(z0.device.type):  # f may run in bf16; the solver's algebra must not
            update = _without_autocast(update)
        if tol is None:
            return self._solve_fixed_count(f, z0, update, max_iter, stop_mode)
        return self._solve_to_tolerance(f, z0, update, tol, max_iter, stop_mode, f_rows)

    def _solve_fixed_count(self, f: FlatMap, z0: torch.Tensor, update, max_iter: int, stop_mode: StopMode):
        """Exactly ``max_iter`` steps with no data-dependent control flow (so torch.compile traces it whole) and no
        host synchronisation.

        The record (``info``) is computed when first read, except under torch.compile. Solvers that do not read
        the residual (plain iteration) compute none in the loop: while the iterates fit in ``KEEP_BYTES`` they
        are kept and turned into the trace with a few batched ops; beyond that each step's residual is computed
        as it goes (cheaper than stacking large iterates).
        """
        state, z = self._start(z0), z0
        compiling = torch.compiler.is_compiling()
        if not self.uses_residual and (compiling or (max_iter + 1) * z0.numel() * z0.element_size() <= KEEP_BYTES):
            zs, fzs = [], []
            for _ in range(max_iter):
                fz = f(z)
                zs.append(z)
                fzs.append(fz)
                z = update(state, z, fz, None)
            if compiling:
                return z, fixed_count_info(_steps_residuals(zs, fzs, stop_mode), z)
            return z, SolveInfo.deferred(_FromIterates(zs, fzs, z, stop_mode))
        rel = stop_mode == "rel"
        residuals: list[torch.Tensor] = []
        norms: list[torch.Tensor] = []
        for _ in range(max_iter):
            fz = f(z)
            abs_res = torch.linalg.vector_norm(fz - z, dim=1)
            residuals.append(abs_res)
            if rel:
                norms.append(torch.linalg.vector_norm(fz, dim=1))
            z = update(state, z, fz, abs_res)

        def compute() -> SolveInfo:
            trace = torch.stack(residuals).detach()
            if norms:
                trace = trace / (torch.stack(norms).detach() + _EPS)
            return fixed_count_info(trace, z)

        return z, (compute() if compiling else SolveInfo.deferred(compute))

    @eager_under_compile  # a data-dependent loop: torch.compile runs it eagerly instead of recompiling
    def _solve_to_tolerance(
        self, f: FlatMap, z0: torch.Tensor, update, tol: float, max_iter: int, stop_mode: StopMode,
        f_rows: RowMap | None,
    ) -> tuple[torch.Tensor, SolveInfo]:
        state, z = self._start(z0), z0
        progress = Progress(z0, tol, stop_mode, self.divergence_ratio)
        if is_transformed(z0) or torch.is_grad_enabled():  # no gathering rows under vmap or an unrolled solve
            f_rows = None
        # Once enough samples have stopped, the loop works on the running ones only (``progress.rows``,
        # ascending): f, the solver's update and its state, and Progress's state see that subset.
        transformed, running_until = None, 0
        z = z0
        for iteration in range(max_iter):
            fz = None
            if progress.rows is not None and f_rows is not None:
                try:
                    fz = f_rows(z, progress.rows)
                except RuntimeError:  # f also closes over per-sample tensors: evaluate the whole batch
                    f_rows = None
            if fz is None:
                fz = f(z) if progress.rows is None else f(progress.whole_state(z)).index_select(0, progress.rows)
            abs_res = progress.observe(z, fz)
            # Under torch.func transforms (vmap, grad) a tensor cannot steer Python control flow: run all
            # max_iter iterations there; stopped samples are frozen either way, so the result is the same.
            if transformed is None:
                transformed = is_transformed(progress.active)
            if transformed:
                z = progress.next_state(update(state, z, fz, abs_res))
                continue
            check = (iteration + 1) % self.check_every == 0
            if check:  # the loop's only host synchronisation (besides choosing rows when it compacts)
                running = int(progress.active.sum())
                if running == 0:
                    break
                running_until = iteration + 1  # some sample ran in each of these iterations
            z = progress.next_state(update(state, z, fz, abs_res))
            working = z.shape[0]
            if check and f_rows is not None and running <= COMPACT_BELOW * working and working > MIN_ROWS:
                keep = keep_positions(progress.active, running)
                try:
                    self._select(state, keep)
                except NotImplementedError:
                    f_rows = None
                else:
                    progress.shrink(keep)
                    z = z.index_select(0, keep)
        best = progress.best()
        if transformed:  # fields are computed now, inside the transform
            return best, progress.info()
        iterations = progress.ran(running_until) if self.check_every > 1 else None  # one more synchronisation
        return best, SolveInfo.deferred(lambda: progress.info(iterations))

    def _select(self, state: object, keep: torch.Tensor) -> None:
        """Keep only the samples ``keep`` (positions, ascending) of the per-solve state (in place)."""
        if state is not None:
            select = getattr(state, "select", None)
            if select is None:
                raise NotImplementedError
            select(keep)


def keep_positions(active: torch.Tensor, running: int) -> torch.Tensor:
    """Positions of the running samples in ``active`` (ascending), padded with stopped ones up to ``MIN_ROWS``."""
    if running >= MIN_ROWS:
        return active.nonzero().squeeze(1)
    pad = (~active).nonzero().squeeze(1)[: MIN_ROWS - running]
    return torch.cat([active.nonzero().squeeze(1), pad]).sort().values


def _without_autocast(update):
    """Wrap a solver update so it runs with autocast off (Anderson's LU has no bf16 kernel)."""

    def wrapped(state: object, z: torch.Tensor, fz: torch.Tensor, abs_res: torch.Tensor) -> torch.Tensor:
        with torch.autocast(z.device.type, enabled=False):
            return update(state, z, fz, abs_res)

    return wrapped


class _FromIterates:
    """Computes a fixed-count solve's record from its kept iterates, refusing if they were changed in place since."""

    def __init__(self, zs: list[torch.Tensor], fzs: list[torch.Tensor], z: torch.Tensor, stop_mode: StopMode):
        self.zs, self.fzs, self.z, self.stop_mode = zs, fzs, z, stop_mode
        self.versions = [t._version for t in (*zs, *fzs)]

    def __call__(self) -> SolveInfo:
        if [t._version for t in (*self.zs, *self.fzs)] != self.versions:
            raise RuntimeError(
                "the iterates of this fixed-count solve (z0 or the returned z) were modified in place before its "
                "info was read; read info (e.g. info.residual) first, or modify a copy"
            )
        return fixed_count_info(_steps_residuals(self.zs, self.fzs, self.stop_mode), self.z)


def _steps_residuals(zs: list[torch.Tensor], fzs: list[torch.Tensor], stop_mode: StopMode) -> torch.Tensor:
    """Trace rows [T, B] of T steps from their iterates and images: ‖f(z) − z‖ (/ ‖f(z)‖ in rel mode)."""
    if all(a is b for a, b in zip(fzs[:-1], zs[1:])):  # plain iteration: each f(z) is the next z
        seq = torch.stack([*zs, fzs[-1]])
        if seq.requires_grad:  # an unrolled solve: the trace is a record, not part of the graph
            seq = seq.detach()
        z, fz = seq[:-1], seq[1:]
    else:
        z, fz = torch.stack(zs), torch.stack(fzs)
        if fz.requires_grad or z.requires_grad:
            z, fz = z.detach(), fz.detach()
    res = torch.linalg.vector_norm(fz - z, dim=2)
    return res / (torch.linalg.vector_norm(fz, dim=2) + _EPS) if stop_mode == "rel" else res


def fixed_count_info(trace: torch.Tensor, z: torch.Tensor) -> SolveInfo:
    """Info for a fixed-count run from its trace [T, B] of per-step residuals: nothing converged.

    The residual reported is that of the second-to-last iterate (the last step's size), which costs no
    extra evaluation of f.
    """
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
