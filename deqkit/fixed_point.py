"""The entry points: ``fixed_point(f, z0, ...)`` and the ``FixedPoint`` module wrapping a step.

The solve and the gradient are separate objects (a ``Solver`` and a ``BackwardEstimator``) that never see
each other's internals. Gradients are recorded exactly when ``torch.is_grad_enabled()``.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any, Callable, Iterator, Literal

import torch
from torch import nn

from deqkit.backward import BackwardEstimator, resolve_backward
from deqkit.errors import ConfigError, reject_unknown_options, unknown_choice
from deqkit.pytree import State, StateSpec, flat_map, spec_of, tree_leaves, tree_map
from deqkit.solvers import Solver, resolve_solver
from deqkit.solvers.base import STOP_MODES, SolveInfo, StopMode

OPTIONS = ("solver", "backward", "tol", "max_iter", "stop_mode", "z0_grad")
Z0Grad = Literal["none", "straight_through"]
Z0_GRADS = ("none", "straight_through")
FIXED_POINT_OPTIONS = ("inputs", *OPTIONS)


def check_options(tol: float | None, max_iter: int, stop_mode: str, z0_grad: str = "none") -> None:
    """Validate the solve options shared by ``fixed_point`` and ``FixedPoint``."""
    if z0_grad not in Z0_GRADS:
        raise unknown_choice("z0_grad", z0_grad, Z0_GRADS)
    if tol is not None and not (isinstance(tol, (int, float)) and tol > 0):
        raise ConfigError(f"tol={tol!r} is invalid; use a positive number, or None for a fixed iteration count")
    if isinstance(max_iter, bool) or not (isinstance(max_iter, int) and max_iter >= 1):
        raise ConfigError(f"max_iter={max_iter!r} is invalid; use an integer >= 1")
    if stop_mode not in STOP_MODES:
        raise unknown_choice("stop_mode", stop_mode, STOP_MODES)


def fixed_point(
    f: Callable[[State], State],
    z0: State,
    *,
    solver: str | Solver = "anderson",
    backward: str | BackwardEstimator = "ift",
    tol: float | None = 1e-4,
    max_iter: int = 50,
    stop_mode: StopMode = "rel",
    inputs: tuple | None = None,
    z0_grad: Z0Grad = "none",
    **unknown: Any,
) -> tuple[State, SolveInfo]:
    """Solve z = f(z) per sample from ``z0`` and return ``(z, info)`` with gradients from ``backward``.

    ``f`` maps a state (tensor or pytree of tensors, batch first, samples independent) to a state of the
    same structure and closes over its inputs and parameters. ``tol=None`` runs exactly ``max_iter``
    iterations and returns the last iterate. Under ``torch.is_grad_enabled()`` the result carries the
    chosen gradient. Implicit estimators return their steps from the detached solution (f applied once for
    IFT and ``Neumann(1)``, k times for ``Neumann(k)``/``Phantom(k)``) in both modes: the value does not
    depend on whether gradients are recorded.

    ``inputs``: instead of closing over them, f may take its per-sample inputs as ``f(z, *inputs)``
    (pytrees of batch-first tensors). Once a quarter of the batch has stopped, the solver then works on the
    samples still running only (``f(z[rows], *inputs[rows])`` and its own update), so samples that
    converged stop costing time; results are the same as without ``inputs``.

    ``z0_grad``: what an implicit estimator gives ``z0`` (the fixed point does not depend on where the
    solve starts, so by default nothing); ``"straight_through"`` passes the result's gradient to ``z0``
    unchanged (z + z0 − z0.detach(), zero in value), as a learned slot initialisation needs. ``Unrolled``
    always gives ``z0`` the exact gradient of the loop.
    """
    reject_unknown_options("fixed_point", unknown, FIXED_POINT_OPTIONS)
    check_options(tol, max_iter, stop_mode, z0_grad)
    solver_obj, estimator = resolve_solver(solver), resolve_backward(backward)
    spec = spec_of(z0)
    f_rows = None
    if inputs is not None:
        if not isinstance(inputs, tuple):
            raise ConfigError(f"inputs must be a tuple (f is called as f(z, *inputs)), got {type(inputs).__name__}")
        step, f = f, lambda z: step(z, *inputs)
        if tol is not None and not torch.compiler.is_compiling():
            f_rows = row_map(step, inputs, spec)
    f_flat = flat_map(f, spec)
    z0_flat = spec.flatten(z0)

    def solve(z_init: torch.Tensor) -> tuple[torch.Tensor, SolveInfo]:
        return solver_obj.solve(f_flat, z_init, tol=tol, max_iter=max_iter, stop_mode=stop_mode, f_rows=f_rows)

    if torch.is_grad_enabled() and estimator.unrolled:
        z, info = solve(z0_flat)
    else:
        with torch.no_grad():
            z, info = solve(z0_flat.detach())
        # The estimator's steps from z* run whether or not gradients are recorded, so evaluation returns
        # the value training computed (a fixed-count loop would otherwise be k updates short under no_grad).
        z = estimator.attach(f_flat, z)
        if z0_grad == "straight_through" and torch.is_grad_enabled():
            z = z + (z0_flat - z0_flat.detach())  # zero in value; identity gradient to z0
    if _recorders and not torch.compiler.is_compiling():
        _recorders[-1].append(SolveRecord(info=info, tol=tol))
    return spec.unflatten(z), info


@dataclass(frozen=True)
class SolveRecord:
    """One ``fixed_point`` call seen by :func:`record_solves`: its solve info and tolerance."""

    info: SolveInfo
    tol: float | None


_recorders: list[list[SolveRecord]] = []


@contextmanager
def record_solves() -> Iterator[list[SolveRecord]]:
    """Collect every direct ``fixed_point`` call made inside the block (``FixedPoint`` layers keep their own
    ``last`` record and are not repeated here), so a trainer can log solves it cannot see as modules."""
    records: list[SolveRecord] = []
    _recorders.append(records)
    try:
        yield records
    finally:
        _recorders.remove(records)


def row_map(step: Callable[..., State], inputs: tuple, spec: StateSpec) -> Callable | None:
    """``(z_flat[rows], rows) -> f(z)[rows]`` evaluating ``step`` on those samples of z and of ``inputs``.

    None when some tensor in ``inputs`` is not batch-first with the state's batch size (nothing to slice
    safely, or no tensor at all: f then closes over its per-sample data). If f still closes over per-sample
    tensors, the evaluation on a subset fails and the solver goes back to whole batches. The subset of
    inputs is kept while the solver passes the same ``rows`` tensor.
    """
    leaves = [leaf for leaf in tree_leaves(inputs) if isinstance(leaf, torch.Tensor)]
    if not leaves or any(leaf.dim() == 0 or leaf.shape[0] != spec.batch for leaf in leaves):
        return None
    cache: dict[str, Any] = {"rows": None}

    def take(x: Any, rows: torch.Tensor) -> Any:
        return x.index_select(0, rows) if isinstance(x, torch.Tensor) else x

    def f_rows(z_rows: torch.Tensor, rows: torch.Tensor) -> torch.Tensor:
        # The solver passes the same tensor while its set of rows does not change (comparing values would
        # cost a host synchronisation per evaluation).
        if cache["rows"] is not rows:
            cache["rows"], cache["inputs"] = rows, tree_map(lambda x: take(x, rows), inputs)
        sub = replace(spec, batch=rows.numel())
        out = sub.flatten(step(sub.unflatten(z_rows), *cache["inputs"]))
        if out.shape != z_rows.shape:  # f broadcast against a closed-over per-sample tensor: not row-wise
            raise RuntimeError(f"f on {rows.numel()} rows returned shape {tuple(out.shape)}")
        return out if out.dtype == z_rows.dtype else out.to(z_rows.dtype)  # e.g. bf16 out of autocast

    return f_rows


@dataclass(frozen=True)
class FixedPointRecord:
    """The most recent forward of a ``FixedPoint``: its fixed point and inputs (detached) and the solve info."""

    z: State
    inputs: tuple
    info: SolveInfo


class FixedPoint(nn.Module):
    """Wrap an iterative step ``step(z, *inputs) -> z`` as a fixed-point layer.

    ``forward(z0, *inputs)`` returns ``(z, info)``. The inputs are passed to ``fixed_point(..., inputs=...)``:
    per-sample tensors (batch first) go there rather than into the step's closure, so converged samples
    can stop costing evaluations. ``solver`` and ``backward`` may be changed between calls (e.g. to
    compare the Neumann and IFT gradients of a trained model). ``last`` keeps the latest fixed point and
    inputs so diagnostics can look at the step's Jacobian there: ``closure(*last.inputs)``.
    """

    def __init__(
        self,
        step: Callable[..., State],
        *,
        solver: str | Solver = "anderson",
        backward: str | BackwardEstimator = "ift",
        tol: float | None = 1e-4,
        max_iter: int = 50,
        stop_mode: StopMode = "rel",
        z0_grad: Z0Grad = "none",
        **unknown: Any,
    ):
        super().__init__()
        reject_unknown_options("FixedPoint", unknown, OPTIONS)
        check_options(tol, max_iter, stop_mode, z0_grad)
        self.step = step
        self.solver = solver
        self.backward = backward
        self.tol, self.max_iter, self.stop_mode, self.z0_grad = tol, max_iter, stop_mode, z0_grad
        self.last: FixedPointRecord | None = None

    @property
    def solver(self) -> Solver:
        return self._solver

    @solver.setter
    def solver(self, value: str | Solver) -> None:
        self._solver = resolve_solver(value)

    @property
    def backward(self) -> BackwardEstimator:
        return self._backward

    @backward.setter
    def backward(self, value: str | BackwardEstimator) -> None:
        self._backward = resolve_backward(value)

    def closure(self, *inputs: Any) -> Callable[[State], State]:
        """The map z -> step(z, *inputs) whose fixed point this layer finds."""
        return lambda z: self.step(z, *inputs)

    def forward(self, z0: State, *inputs: Any) -> tuple[State, SolveInfo]:
        z, info = fixed_point(
            self.step,
            z0,
            inputs=inputs,
            solver=self._solver,
            backward=self._backward,
            tol=self.tol,
            max_iter=self.max_iter,
            stop_mode=self.stop_mode,
            z0_grad=self.z0_grad,
        )
        if _recorders and not torch.compiler.is_compiling():
            _recorders[-1].pop()  # logged through self.last, not as a direct call
        detach = lambda t: t.detach() if isinstance(t, torch.Tensor) else t  # noqa: E731
        self.last = FixedPointRecord(z=tree_map(detach, z), inputs=tree_map(detach, inputs), info=info)
        return z, info

    def extra_repr(self) -> str:
        return (f"solver={self._solver}, backward={self._backward}, tol={self.tol}, max_iter={self.max_iter}, "
                f"stop_mode={self.stop_mode!r}, z0_grad={self.z0_grad!r}")
