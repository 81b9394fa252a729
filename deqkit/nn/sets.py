"""Permutation-invariant encoders of sets of a fixed size: ``[B, N, D] -> [B, E]``.

The default pooling is FSPool (Zhang, Hare & Prügel-Bennett, ICLR 2020, "FSPool: learning set
representations with featurewise sort pooling"), the encoder of DSPN and iDSPN. Why FSPool and not a sum:
the DSPN decoder descends the gradient of ``½‖enc(Y) − z‖²`` with respect to the set Y, and with a
sum/mean pooling that gradient is *equivariant* — two equal elements get equal gradients and never
separate, so the decoder depends on a spread-out starting set. Sorting each feature gives each rank its own
weight, so equal elements receive different gradients (iDSPN's "exclusive multiset equivariance"), while
the pooled value stays invariant to the order of the elements. With a fixed N the paper's piecewise-linear
weight function, evaluated at the N ranks, is just one learned weight per (feature, rank).
"""

from __future__ import annotations

from typing import Literal

import torch
from torch import nn

from deqkit.errors import ConfigError

Pooling = Literal["fspool", "sum"]


class FSPool(nn.Module):
    """Featurewise sort pooling of sets of ``set_size`` elements: ``[B, N, C] -> [B, C]``.

    Each feature is sorted in decreasing order over the set and summed with learned per-rank weights.
    """

    def __init__(self, channels: int, set_size: int):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(channels, set_size) / set_size**0.5)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if x.shape[1] != self.weight.shape[1]:
            raise ValueError(f"FSPool was built for sets of {self.weight.shape[1]} elements, got {x.shape[1]}")
        ranked = x.sort(dim=1, descending=True).values  # [B, N, C]
        return torch.einsum("bnc,cn->bc", ranked, self.weight)


class SetEncoder(nn.Module):
    """``enc(Y) = W · pool(MLP(y_i))``: a per-element MLP, a permutation-invariant pooling and a linear map.

    ``forward(y [B,N,D]) -> [B,E]``. ``pool="fspool"`` (default, see the module docstring) or ``"sum"``.
    """

    def __init__(self, element_dim: int, set_size: int, hidden: int, out_dim: int, pool: Pooling = "fspool"):
        super().__init__()
        if pool not in ("fspool", "sum"):
            raise ConfigError(f"SetEncoder: unknown pool {pool!r}; use 'fspool' or 'sum'")
        self.mlp = nn.Sequential(nn.Linear(element_dim, hidden), nn.ReLU(), nn.Linear(hidden, hidden))
        self.pool = FSPool(hidden, set_size) if pool == "fspool" else None
        self.out = nn.Linear(hidden, out_dim)

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        h = self.mlp(y)
        return self.out(self.pool(h) if self.pool is not None else h.sum(dim=1))
