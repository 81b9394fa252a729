"""Gradient estimators for fixed points: each is a small immutable object; pass one as ``backward=``."""

from __future__ import annotations

from deqkit.backward.base import BackwardEstimator
from deqkit.backward.ift import IFT
from deqkit.backward.neumann import Neumann
from deqkit.backward.phantom import Phantom
from deqkit.backward.unrolled import Unrolled
from deqkit.errors import resolve_choice

ESTIMATORS: dict[str, type[BackwardEstimator]] = {
    "unrolled": Unrolled,
    "neumann": Neumann,
    "phantom": Phantom,
    "ift": IFT,
}


def resolve_backward(backward: str | BackwardEstimator) -> BackwardEstimator:
    """An estimator object from a name (default parameters) or the object itself."""
    return resolve_choice("backward", backward, ESTIMATORS, BackwardEstimator)


__all__ = ["BackwardEstimator", "ESTIMATORS", "IFT", "Neumann", "Phantom", "Unrolled", "resolve_backward"]
