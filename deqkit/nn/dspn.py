"""Deep Set Prediction Networks (Zhang et al., NeurIPS 2019) and iDSPN (Zhang et al., ICLR 2022) as a
fixed point.

A set Y is decoded from a vector z by minimising the inner objective ``L(Y) = ½‖enc(Y) − z‖²`` with a
permutation-invariant encoder ``enc``; as in iDSPN's code the squared norms are means over their entries
(so an inner learning rate of 1 suits any code width), and an optional ``reg · ½‖Y − Y₀‖²`` keeps the set
near its start (iDSPN uses 0.1 with a learned start): it makes the Hessian of L positive definite, so the
fixed point is isolated and the implicit gradient well posed even when enc cannot see every direction of
Y. The optimiser is the step of a ``deqkit.FixedPoint``:

    f(Y) = Y − lr · ∇_Y L(Y)

so the gradient is one argument. ``unrolled`` is DSPN (backpropagate through every inner step);
``neumann`` (Neumann(1), one differentiable step from the detached set) is iDSPN's approximate implicit
differentiation (the Jacobian-free gradient that replaces the inverse Hessian by the identity); ``ift`` is
the exact implicit gradient at a stationary point of L.

The step itself differentiates: it calls ``torch.autograd.grad`` under ``torch.enable_grad()``, with
``create_graph`` exactly when the caller records a graph, so it runs inside no-grad solves (no graph is
kept) and inside implicit backward passes (a double backward through ``enc``). Inside ``torch.func``
transforms (the spectral diagnostics' JVPs) it uses ``torch.func.grad`` instead, which composes with them.

``inner_objective="batch_mean"`` is the reference DSPN code's form instead (Cyanogenoid/dspn ``dspn.py``:
``F.smooth_l1_loss(enc(Y), z, reduction="mean")``): a Huber loss averaged over the batch as well as the
code, so each sample's step is its per-sample Huber gradient divided by the batch size B, and a sample's
inner steps depend on how many samples share its batch (the reference's inner lr of 800 absorbs the 1/B).
The default ``"per_sample"`` is iDSPN's objective: one sample's descent never depends on the others.

Shapes: B batch, N set size, D element width, E code width.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

from deqkit.backward import BackwardEstimator
from deqkit.errors import ConfigError
from deqkit.fixed_point import FixedPoint
from deqkit.solvers import Solver
from deqkit.solvers.base import SolveInfo, is_transformed

SetInit = Literal["learned", "random"]
InnerObjective = Literal["per_sample", "batch_mean"]


def inner_objective(encoder: nn.Module, y: torch.Tensor, z: torch.Tensor, y0: torch.Tensor | None = None,
                    reg: float = 0.0, form: InnerObjective = "per_sample") -> torch.Tensor:
    """``per_sample``: ``Σ_b ½ mean_e (enc(Y_b) − z_b)² + reg · ½ mean_{n,d} (Y_b − Y0_b)²``, summed over
    the batch, so each sample's gradient is its own. ``batch_mean``: ``mean_{b,e} huber(enc(Y_b) − z_b)
    + reg · ½ mean_{b,n,d} (Y_b − Y0_b)²`` (the reference DSPN's, with Huber's threshold 1)."""
    if form == "batch_mean":
        value = F.smooth_l1_loss(encoder(y), z, reduction="mean")
        return value + reg * 0.5 * (y - y0).square().mean() if reg else value
    value = 0.5 * (encoder(y) - z).square().mean(-1).sum()
    if reg:
        value = value + reg * 0.5 * (y - y0).square().mean((-2, -1)).sum()
    return value


def inner_gradient(encoder: nn.Module, y: torch.Tensor, z: torch.Tensor, y0: torch.Tensor | None = None,
                   reg: float = 0.0, form: InnerObjective = "per_sample") -> torch.Tensor:
    """``∇_Y`` of :func:`inner_objective`, ``[B,N,D]``; differentiable when grad mode is on."""
    if is_transformed(y):
        return torch.func.grad(lambda y_: inner_objective(encoder, y_, z, y0, reg, form))(y)
    record = torch.is_grad_enabled()
    with torch.enable_grad():
        # without a graph to record, always differentiate from a fresh leaf: a view of a state that requires
        # grad, taken under no_grad, reports requires_grad but is not connected to anything
        y_in = y if record and y.requires_grad else y.detach().requires_grad_()
        (grad,) = torch.autograd.grad(inner_objective(encoder, y_in, z, y0, reg, form), y_in, create_graph=record)
    return grad


class DSPNStep(nn.Module):
    """One gradient-descent step on the inner objective: ``forward(y [B,N,D], z [B,E], y0=None) -> [B,N,D]``
    (``y0`` is the start the ``reg`` term pulls towards).

    With ``momentum > 0`` the state is the pair ``(y, buf)`` and the step is PyTorch's SGD with Nesterov
    momentum (``buf <- momentum·buf + g``, ``y <- y − lr·(g + momentum·buf)``, ``g = ∇L(y)``), iDSPN's
    default inner optimiser. Its fixed points are the stationary points of L with ``buf = 0``.
    """

    def __init__(self, encoder: nn.Module, lr: float, reg: float = 0.0, momentum: float = 0.0,
                 objective: InnerObjective = "per_sample"):
        super().__init__()
        if objective not in ("per_sample", "batch_mean"):
            raise ConfigError(f"DSPNStep: unknown inner objective {objective!r}; use 'per_sample' or 'batch_mean'")
        if not lr > 0:
            raise ConfigError(f"DSPNStep: lr must be > 0, got {lr!r}")
        if reg < 0:
            raise ConfigError(f"DSPNStep: reg must be >= 0, got {reg!r}")
        if not 0 <= momentum < 1:
            raise ConfigError(f"DSPNStep: momentum must be in [0, 1), got {momentum!r}")
        self.encoder, self.lr, self.reg, self.momentum, self.objective = encoder, lr, reg, momentum, objective

    def forward(self, state: torch.Tensor | tuple[torch.Tensor, torch.Tensor], z: torch.Tensor,
                y0: torch.Tensor | None = None) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
        if self.reg and y0 is None:
            raise ValueError("DSPNStep with reg > 0 needs the start y0")
        if not self.momentum:
            return state - self.lr * inner_gradient(self.encoder, state, z, y0, self.reg, self.objective)
        y, buf = state
        g = inner_gradient(self.encoder, y, z, y0, self.reg, self.objective)
        buf = self.momentum * buf + g
        return y - self.lr * (g + self.momentum * buf), buf


class DSPN(nn.Module):
    """Set decoder ``forward(z [B,E], y0=None) -> (Y [B,N,D], info)``: ``iters`` inner gradient steps.

    ``encoder`` maps ``[B,N,D] -> [B,E]`` and must be permutation invariant (e.g.
    :class:`deqkit.nn.SetEncoder`); sharing it with the encoder of the input set makes a set autoencoder.
    ``momentum`` > 0 makes the inner optimiser SGD with Nesterov momentum (see :class:`DSPNStep`); the
    fixed-point state is then ``(Y, buf)``. The start is ``y0`` if given, else:

    - ``init="learned"``: a learned set, the same for every sample (DSPN). Under an implicit ``backward``
      the fixed point does not depend on where the descent started, so (as in iDSPN) the start gets a
      gradient only through the ``reg`` term; ``unrolled`` gives it the exact gradient of the loop.
    - ``init="random"``: a fresh N(0, ``init_scale``²) set per call.

    ``inner_objective``: ``"per_sample"`` (iDSPN) or ``"batch_mean"`` (the reference DSPN code's batch-averaged
    Huber loss; see the module docstring).
    """

    def __init__(self, encoder: nn.Module, set_size: int, element_dim: int, *, iters: int = 10, lr: float = 1.0,
                 reg: float = 0.0, momentum: float = 0.0, init: SetInit = "learned", init_scale: float = 0.1,
                 solver: str | Solver = "iteration", backward: str | BackwardEstimator = "neumann",
                 tol: float | None = None, inner_objective: InnerObjective = "per_sample"):
        super().__init__()
        if init not in ("learned", "random"):
            raise ConfigError(f"DSPN: unknown init {init!r}; use 'learned' or 'random'")
        self.set_size, self.element_dim, self.init, self.init_scale = set_size, element_dim, init, init_scale
        if init == "learned":
            self.initial_set = nn.Parameter(torch.randn(1, set_size, element_dim) * init_scale)
        self.step = DSPNStep(encoder, lr, reg, momentum, inner_objective)
        self.fixed_point = FixedPoint(self.step, solver=solver, backward=backward, tol=tol, max_iter=iters)

    def start(self, batch: int, like: torch.Tensor) -> torch.Tensor:
        if self.init == "learned":
            return self.initial_set.expand(batch, -1, -1)
        return torch.randn(batch, self.set_size, self.element_dim, device=like.device, dtype=like.dtype) * self.init_scale

    def forward(self, z: torch.Tensor, y0: torch.Tensor | None = None) -> tuple[torch.Tensor, SolveInfo]:
        y0 = self.start(z.shape[0], z) if y0 is None else y0
        if not self.step.momentum:
            return self.fixed_point(y0, z, y0)
        (y, _), info = self.fixed_point((y0, torch.zeros_like(y0)), z, y0)
        return y, info
