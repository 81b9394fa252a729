"""The protocol of gradient (backward) estimators.

An estimator decides how gradients flow from the fixed point z* back to f's parameters and inputs. Implicit
estimators receive z* from a solve run without autograd and build a short graph from it (``attach``); the
unrolled estimator instead asks for the forward solve itself to be recorded.
"""

from __future__ import annotations

import torch

from deqkit.errors import CheckedOptions
from deqkit.solvers.base import FlatMap


class BackwardEstimator(CheckedOptions):
    """Base class. ``unrolled`` estimators record the solve; the others implement ``attach``."""

    unrolled: bool = False

    def attach(self, f: FlatMap, z_star: torch.Tensor) -> torch.Tensor:
        """The estimator's value from ``z_star`` [B, D] (z* or steps of f from it), also called under no_grad; with
        gradients on, its graph carries the gradient."""
        raise NotImplementedError
