"""Deep Set Prediction Networks (Zhang et al., NeurIPS 2019) and iDSPN (Zhang et al., ICLR 2022) as a
fixed point.

A set Y is decoded from a vector z by minimising the inner objective ``L(Y) = ½‖enc(Y) − z‖²`` with a
permutation-invariant encoder ``enc``. The optimiser is the step of a ``deqkit.FixedPoint``:

    f(Y) = Y − lr · ∇_Y L(Y)

so the gradient is one argument. ``unrolled`` is DSPN (backpropagate through every inner step);
``neumann`` (Neumann(1), one differentiable step from the detached set) is iDSPN's approximate implicit
differentiation (the Jacobian-free gradient that replaces the inverse Hessian by the identity); ``ift`` is
the exact implicit gradient at a stationary point of L.

The step itself differentiates: it calls ``torch.autograd.grad`` under ``torch.enable_grad()``, with
``create_graph`` exactly when the caller records a graph, so it runs inside no-grad solves (no graph is
kept) and inside implicit backward passes (a double backward through ``enc``). Inside ``torch.func``
transforms (the spectral diagnostics' JVPs) it uses ``torch.func.grad`` instead, which composes with them.

Shapes: B batch, N set size, D element width, E code width.
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from deqkit.backward import BackwardEstimator
from deqkit.errors import ConfigError
from deqkit.fixed_point import FixedPoint
from deqkit.solvers import Solver
from deqkit.solvers.base import SolveInfo, is_transformed

SetInit = Literal["learned", "random"]


def inner_objective(encoder: nn.Module, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``Σ_b ½‖enc(Y_b) − z_b‖²`` (a sum, so each sample's gradient is its own)."""
    return 0.5 * (encoder(y) - z).square().sum()


def inner_gradient(encoder: nn.Module, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
    """``∇_Y ½‖enc(Y) − z‖²`` per sample, ``[B,N,D]``; differentiable when grad mode is on (see module doc)."""
    if is_transformed(y):
        return torch.func.grad(lambda y_: inner_objective(encoder, y_, z))(y)
    record = torch.is_grad_enabled()
    with torch.enable_grad():
        y_in = y if y.requires_grad else y.detach().requires_grad_()
        (grad,) = torch.autograd.grad(inner_objective(encoder, y_in, z), y_in, create_graph=record)
    return grad


class DSPNStep(nn.Module):
    """One gradient-descent step on the inner objective: ``forward(y [B,N,D], z [B,E]) -> [B,N,D]``."""

    def __init__(self, encoder: nn.Module, lr: float):
        super().__init__()
        if not lr > 0:
            raise ConfigError(f"DSPNStep: lr must be > 0, got {lr!r}")
        self.encoder, self.lr = encoder, lr

    def forward(self, y: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        return y - self.lr * inner_gradient(self.encoder, y, z)


class DSPN(nn.Module):
    """Set decoder ``forward(z [B,E], y0=None) -> (Y [B,N,D], info)``: ``iters`` inner gradient steps.

    ``encoder`` maps ``[B,N,D] -> [B,E]`` and must be permutation invariant (e.g.
    :class:`deqkit.nn.SetEncoder`); sharing it with the encoder of the input set makes a set autoencoder.
    The start is ``y0`` if given, else:

    - ``init="learned"``: a learned set, the same for every sample (DSPN). Under an implicit ``backward`` it
      gets the output's gradient unchanged (straight-through, as :class:`deqkit.nn.SlotAttention` does).
    - ``init="random"``: a fresh N(0, ``init_scale``²) set per call.
    """

    def __init__(self, encoder: nn.Module, set_size: int, element_dim: int, *, iters: int = 10, lr: float = 1.0,
                 init: SetInit = "learned", init_scale: float = 0.1, solver: str | Solver = "iteration",
                 backward: str | BackwardEstimator = "neumann", tol: float | None = None):
        super().__init__()
        if init not in ("learned", "random"):
            raise ConfigError(f"DSPN: unknown init {init!r}; use 'learned' or 'random'")
        self.set_size, self.element_dim, self.init, self.init_scale = set_size, element_dim, init, init_scale
        if init == "learned":
            self.initial_set = nn.Parameter(torch.randn(1, set_size, element_dim) * init_scale)
        self.step = DSPNStep(encoder, lr)
        self.fixed_point = FixedPoint(self.step, solver=solver, backward=backward, tol=tol, max_iter=iters)

    def start(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        if self.init == "learned":
            return self.initial_set.expand(batch, -1, -1)
        return torch.randn(batch, self.set_size, self.element_dim, device=like.device, dtype=like.dtype) * self.init_scale

    def forward(self, z: torch.Tensor, y0: torch.Tensor | None = None) -> tuple[torch.Tensor, SolveInfo]:
        learned = y0 is None and self.init == "learned"
        y0 = self.start(z.shape[0], z) if y0 is None else y0
        y, info = self.fixed_point(y0, z)
        if learned and not self.fixed_point.backward.unrolled and torch.is_grad_enabled():
            y = y + (y0 - y0.detach())  # zero in value; identity gradient to the learned start
        return y, info
