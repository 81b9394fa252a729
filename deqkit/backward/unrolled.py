"""Backpropagation through every iteration of the solve (the "vanilla" training of iterative models)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import ClassVar

import torch

from deqkit.backward.base import BackwardEstimator
from deqkit.solvers.base import FlatMap


@dataclass(frozen=True)
class Unrolled(BackwardEstimator):
    """Autograd through the whole forward solve: exact for the truncated loop, O(iterations) memory."""

    unrolled: ClassVar[bool] = True  # a property of the class, not an option

    def attach(self, f: FlatMap, z_star: torch.Tensor) -> torch.Tensor:
        return z_star
