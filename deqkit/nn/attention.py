"""Multi-head attention that returns its weights, written with einsum so ``torch.func`` transforms
(``jvp``, ``vmap``) go through it; with slots as keys its softmax is over slots."""

from __future__ import annotations

import torch
from torch import nn


class Attention(nn.Module):
    """Queries ``[B,N,D]`` attend to a context ``[B,M,C]``: ``softmax_M(scale * q k^T / sqrt(d_head)) v``.

    ``forward(x, context)`` returns ``(out [B,N,D], weights [B,H,N,M])`` (weights sum to 1 over ``M``).
    ``x`` may have batch size 1 and broadcast over the context's batch (e.g. one set of per-pixel queries
    for every image). With slots as the context (``M = K``) the softmax is over slots, as in the decoders of
    Brady et al. (2024); with slots as queries it is the ordinary cross-attention of a Transformer.
    ``scale`` sharpens (> 1) or flattens (< 1) the softmax at initialisation.
    """

    def __init__(self, dim: int, context_dim: int | None = None, heads: int = 1, *, scale: float = 1.0):
        super().__init__()
        if dim % heads:
            raise ValueError(f"Attention: dim={dim} must be divisible by heads={heads}")
        context_dim = context_dim or dim
        self.heads, self.scale = heads, scale * (dim // heads) ** -0.5
        self.to_q = nn.Linear(dim, dim, bias=False)
        self.to_k = nn.Linear(context_dim, dim, bias=False)
        self.to_v = nn.Linear(context_dim, dim, bias=False)
        self.to_out = nn.Linear(dim, dim)

    def forward(self, x: torch.Tensor, context: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        h = self.heads
        q = self.to_q(x).unflatten(-1, (h, -1))  # [B,N,H,d]
        k = self.to_k(context).unflatten(-1, (h, -1))  # [B,M,H,d]
        v = self.to_v(context).unflatten(-1, (h, -1))
        weights = torch.einsum("bnhd,bmhd->bhnm", q, k).mul(self.scale).softmax(dim=-1)
        out = torch.einsum("bhnm,bmhd->bnhd", weights, v).flatten(-2)
        return self.to_out(out), weights
