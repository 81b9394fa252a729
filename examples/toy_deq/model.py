"""A one-layer DEQ classifier: z* = tanh(W z* + U(x)), logits = head(z*)."""

from __future__ import annotations

import math

import torch
from torch import nn

import deqkit


class TanhStep(nn.Module):
    """f(z, u) = tanh(W z + u). W starts at spectral norm about 0.5, so f starts as a contraction."""

    def __init__(self, hidden: int) -> None:
        super().__init__()
        self.W = nn.Linear(hidden, hidden, bias=False)
        nn.init.orthogonal_(self.W.weight, gain=0.5)

    def forward(self, z: torch.Tensor, u: torch.Tensor) -> torch.Tensor:  # z, u: [B, H]
        return torch.tanh(self.W(z) + u).to(z.dtype)  # under bf16 autocast the state stays float32


class ToyDEQ(nn.Module):
    """Points ``x: [B, 2]`` -> class logits ``[B, classes]`` through one fixed-point layer."""

    def __init__(self, hidden: int, classes: int, *, solver: str, backward: str, tol: float,
                 max_iter: int, fourier_scale: float = 1.0) -> None:
        super().__init__()
        # random Fourier features of the point (fixed): spirals need more than a linear embedding
        self.register_buffer("frequencies", fourier_scale * torch.randn(2, hidden // 2))
        self.inject = nn.Linear(2 * (hidden // 2), hidden)
        self.fp = deqkit.FixedPoint(TanhStep(hidden), solver=solver, backward=backward, tol=tol,
                                    max_iter=max_iter)
        self.head = nn.Linear(hidden, classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        phase = 2 * math.pi * x @ self.frequencies  # [B, hidden // 2]
        u = self.inject(torch.cat([phase.sin(), phase.cos()], dim=1))  # [B, hidden]
        z, _ = self.fp(torch.zeros(u.shape, device=u.device), u)
        return self.head(z)
