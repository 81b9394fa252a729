"""Forward solvers for z = f(z): each is a small immutable object holding its algorithm's parameters."""

from __future__ import annotations

from deqkit.errors import resolve_choice
from deqkit.solvers.anderson import Anderson
from deqkit.solvers.base import SolveInfo, Solver
from deqkit.solvers.broyden import Broyden
from deqkit.solvers.iteration import Iteration

SOLVERS: dict[str, type[Solver]] = {"iteration": Iteration, "anderson": Anderson, "broyden": Broyden}


def resolve_solver(solver: str | Solver) -> Solver:
    """A solver object from a name (default parameters) or the object itself."""
    return resolve_choice("solver", solver, SOLVERS, Solver)


__all__ = ["Anderson", "Broyden", "Iteration", "SOLVERS", "SolveInfo", "Solver", "resolve_solver"]
