"""Slot attention (Locatello et al., NeurIPS 2020) as a fixed point.

The slot update is the step of a ``deqkit.FixedPoint``, so the gradient is one argument: ``unrolled`` is
vanilla slot attention (backpropagate through every iteration), ``neumann`` is implicit slot attention
(Chang, Griffiths & Levine, NeurIPS 2022: iterate without a graph, then one differentiable step from the
detached slots); ``ift`` and ``phantom`` work too.

Shapes: B batch, N inputs, D input width, K slots, S slot width.
"""

from __future__ import annotations

import math
from typing import Literal

import torch
from torch import nn

from deqkit.backward import BackwardEstimator
from deqkit.errors import ConfigError
from deqkit.fixed_point import FixedPoint
from deqkit.solvers import Solver
from deqkit.solvers.base import SolveInfo


class SlotAttentionStep(nn.Module):
    """One slot update ``slots <- GRU(updates, slots) + MLP(LN(slots))`` for fixed keys and values.

    ``forward(slots [B,K,S], k [B,N,S], v [B,N,S]) -> slots [B,K,S]``. The attention is a softmax over the
    slots (slots compete for each input) followed by a weighted mean over the inputs.
    """

    def __init__(self, slot_dim: int, mlp_hidden: int, eps: float = 1e-8, layer_norm_eps: float = 1e-5):
        super().__init__()
        self.eps, self.scale = eps, slot_dim**-0.5
        self.norm_slots = nn.LayerNorm(slot_dim, eps=layer_norm_eps)
        self.to_q = nn.Linear(slot_dim, slot_dim, bias=False)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        self.norm_mlp = nn.LayerNorm(slot_dim, eps=layer_norm_eps)
        self.mlp = nn.Sequential(nn.Linear(slot_dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, slot_dim))

    def attention(self, slots: torch.Tensor, k: torch.Tensor, over_inputs: bool = True) -> torch.Tensor:
        """Attention weights ``[B,K,N]``: softmax over slots, then normalised over inputs (rows sum to 1);
        with ``over_inputs=False`` only the softmax over slots (columns sum to 1: each input's share per slot)."""
        q = self.to_q(self.norm_slots(slots))
        logits = torch.einsum("bkd,bnd->bkn", q, k) * self.scale
        if not over_inputs:
            return logits.softmax(dim=1)
        attn = logits.softmax(dim=1) + self.eps
        return attn / attn.sum(dim=-1, keepdim=True)

    def forward(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n_slots, s = slots.shape
        updates = torch.einsum("bkn,bnd->bkd", self.attention(slots, k), v)
        slots = self.gru(updates.reshape(-1, s), slots.reshape(-1, s)).reshape(b, n_slots, s)
        return slots + self.mlp(self.norm_mlp(slots))


SlotInit = Literal["gaussian", "learned"]
GaussianInit = Literal["normal", "keras_glorot", "torch_xavier"]


def keras_glorot_uniform_(param: torch.Tensor) -> torch.Tensor:
    """Keras' ``glorot_uniform`` in place: U(±sqrt(6 / (fan_in + fan_out))) with Keras' fans (the last two
    dimensions, times the product of the others), so ``[1, 1, S]`` draws from U(±sqrt(6 / (1 + S))).
    ``torch.nn.init.xavier_uniform_`` counts the fans of that shape differently (U(±sqrt(3 / S)))."""
    receptive = math.prod(param.shape[:-2])
    fan_in, fan_out = param.shape[-2] * receptive, param.shape[-1] * receptive
    bound = math.sqrt(6.0 / (fan_in + fan_out))
    with torch.no_grad():
        return param.uniform_(-bound, bound)


class SlotAttention(nn.Module):
    """Slot attention over a set of inputs: ``forward(inputs [B,N,D]) -> (slots [B,K,S], attn [B,K,N], info)``.

    Slots start from ``init`` (or from ``slots`` if given) and are refined by ``iters`` solver iterations
    of :class:`SlotAttentionStep`; ``attn`` is the attention of the returned slots over the inputs (at a
    fixed point, the attention that produced them). ``solver``, ``backward`` and ``tol`` are those of
    :class:`deqkit.FixedPoint` (``tol=None``: exactly ``iters`` updates).

    - ``init="gaussian"`` (Locatello et al.): samples ``mu + sigma * eps`` of a learned Gaussian, shared by
      all slots. With an implicit ``backward`` the start is detached, so ``mu`` and ``sigma`` get gradients
      only from ``unrolled``.
    - ``init="learned"``: K learned starting slots (queries), the same for every image, so slots differ
      from the first step on. With an implicit ``backward`` they get the output slots' gradient unchanged
      (straight-through: ``slots + q - q.detach()``, in the spirit of Jia et al., ICLR 2023, "BO-QSA",
      which passes it through the last step instead); with ``unrolled`` their exact gradient.

    Options that reproduce the reference code (google-research/slot_attention, Keras) where deqkit's
    defaults differ: ``layer_norm_eps`` (torch's 1e-5; Keras' ``LayerNormalization`` uses 1e-3) for the
    three LayerNorms of slot attention, and ``gaussian_init`` for the Gaussian's ``mu`` and ``log_sigma``:
    ``"normal"`` draws ``mu`` from N(0, 1) and ``log_sigma`` by torch's ``xavier_uniform_``;
    ``"keras_glorot"`` draws both by Keras' ``glorot_uniform`` (:func:`keras_glorot_uniform_`, the
    google-research reference); ``"torch_xavier"`` both by torch's ``xavier_uniform_`` (SLATE's code).
    """

    def __init__(self, num_slots: int, input_dim: int, slot_dim: int = 64, mlp_hidden: int = 128,
                 iters: int = 3, *, solver: str | Solver = "iteration", backward: str | BackwardEstimator = "neumann",
                 tol: float | None = None, init: SlotInit = "gaussian", layer_norm_eps: float = 1e-5,
                 gaussian_init: GaussianInit = "normal"):
        super().__init__()
        if init not in ("gaussian", "learned"):
            raise ConfigError(f"SlotAttention: unknown init {init!r}; use 'gaussian' or 'learned'")
        if gaussian_init not in ("normal", "keras_glorot", "torch_xavier"):
            raise ConfigError(f"SlotAttention: unknown gaussian_init {gaussian_init!r}; use 'normal', 'keras_glorot' "
                              "or 'torch_xavier'")
        if not layer_norm_eps > 0:
            raise ConfigError(f"SlotAttention: layer_norm_eps must be > 0, got {layer_norm_eps!r}")
        self.num_slots, self.slot_dim, self.init = num_slots, slot_dim, init
        self.norm_inputs = nn.LayerNorm(input_dim, eps=layer_norm_eps)
        self.to_k = nn.Linear(input_dim, slot_dim, bias=False)
        self.to_v = nn.Linear(input_dim, slot_dim, bias=False)
        if init == "gaussian":
            self.mu = nn.Parameter(torch.randn(1, 1, slot_dim))
            self.log_sigma = nn.Parameter(torch.empty(1, 1, slot_dim))
            nn.init.xavier_uniform_(self.log_sigma)
            if gaussian_init == "torch_xavier":
                nn.init.xavier_uniform_(self.mu)
            elif gaussian_init == "keras_glorot":
                keras_glorot_uniform_(self.mu)
                keras_glorot_uniform_(self.log_sigma)
        else:
            self.queries = nn.Parameter(torch.randn(1, num_slots, slot_dim) * slot_dim**-0.5)
        self.step = SlotAttentionStep(slot_dim, mlp_hidden, layer_norm_eps=layer_norm_eps)
        self.fixed_point = FixedPoint(self.step, solver=solver, backward=backward, tol=tol, max_iter=iters)

    def initial_slots(self, batch: int, noise: torch.Tensor | None = None) -> torch.Tensor:
        """``[B,K,S]``: samples of the learned Gaussian (from ``noise [B,K,S]`` if given, else fresh
        N(0, 1) noise), or the learned queries."""
        if self.init == "learned":
            return self.queries.expand(batch, -1, -1)
        if noise is None:
            noise = torch.randn(batch, self.num_slots, self.slot_dim, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + self.log_sigma.exp() * noise

    def iterate(self, inputs: torch.Tensor, slots: torch.Tensor, steps: int) -> torch.Tensor:
        """``steps`` plain slot updates of ``slots [B,K,S]`` over ``inputs [B,N,D]``, without the fixed
        point's solver (the iterates of ``solver="iteration"``), e.g. the slots of an earlier iteration."""
        inputs = self.norm_inputs(inputs)
        k, v = self.to_k(inputs), self.to_v(inputs)
        for _ in range(steps):
            slots = self.step(slots, k, v)
        return slots

    def masks(self, inputs: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """``[B,K,N]``: how the inputs ``[B,N,D]`` are shared among ``slots`` (softmax over slots, columns sum
        to 1), the attention masks SLATE shows and scores."""
        return self.step.attention(slots, self.to_k(self.norm_inputs(inputs)), over_inputs=False)

    def forward(self, inputs: torch.Tensor, slots: torch.Tensor | None = None, *, noise: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, SolveInfo]:
        """``noise [B,K,S]``: the N(0, 1) draw of the Gaussian start (fresh if None), so that a caller can
        rebuild the same start later; ignored when ``slots`` is given or ``init="learned"``."""
        inputs = self.norm_inputs(inputs)
        k, v = self.to_k(inputs), self.to_v(inputs)
        from_queries = slots is None and self.init == "learned"
        slots0 = self.initial_slots(inputs.shape[0], noise) if slots is None else slots
        # learned queries get the output slots' gradient unchanged under an implicit backward (the core's
        # z0_grad option); a start the caller passes gets what the estimator gives it
        self.fixed_point.z0_grad = "straight_through" if from_queries else "none"
        slots, info = self.fixed_point(slots0, k, v)
        return slots, self.step.attention(slots, k), info
