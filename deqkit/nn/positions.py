"""Pixel coordinates for position embeddings, and where a slot's attention sits on the grid."""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn


def position_grid(height: int, width: int, device: Any = None) -> torch.Tensor:
    """``[H,W,4]`` coordinates ``(y, x, 1-y, 1-x)`` in [0, 1], the input of the soft position embedding."""
    ys = torch.linspace(0.0, 1.0, height, device=device)
    xs = torch.linspace(0.0, 1.0, width, device=device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)
    return torch.cat([grid, 1.0 - grid], dim=-1)


class SoftPositionEmbed(nn.Module):
    """Adds a learned linear map of the pixel coordinates to a channels-last feature map ``[B,H,W,C]``
    (Locatello et al. 2020)."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Linear(4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(position_grid(x.shape[1], x.shape[2], x.device))


def slot_frames(attn: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each slot looks: centre ``[B,K,2]`` and per-axis spread ``[B,K,2]`` (``(y, x)`` in [0, 1]) of
    its attention ``[B,K,N]`` (rows summing to 1) over an ``height x width`` grid of inputs."""
    pos = position_grid(height, width, attn.device)[..., :2].reshape(-1, 2).to(attn.dtype)  # [N,2]
    centre = attn @ pos
    variance = attn @ pos.square() - centre.square()
    return centre, variance.clamp_min(1e-4).sqrt()  # >= 0.01: a finite gradient and a bounded 1/spread


def fourier_features(height: int, width: int, frequencies: int, device: Any = None) -> torch.Tensor:
    """``[H,W,2+4F]`` Fourier encoding of pixel centres ``(y, x)`` in [-1, 1]: the coordinates, then
    ``sin`` and ``cos`` of ``2^f pi y`` and ``2^f pi x`` for ``f = 0..F-1`` (Mildenhall et al. 2020,
    Tancik et al. 2020); the per-pixel queries of a slot-conditioned implicit decoder."""
    ys = (torch.arange(height, device=device, dtype=torch.float32) + 0.5) / height * 2 - 1
    xs = (torch.arange(width, device=device, dtype=torch.float32) + 0.5) / width * 2 - 1
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)  # [H,W,2]
    scales = math.pi * 2.0 ** torch.arange(frequencies, device=device, dtype=torch.float32)  # [F]
    angles = (grid[..., None] * scales).flatten(-2)  # [H,W,2F]
    return torch.cat([grid, angles.sin(), angles.cos()], dim=-1)
