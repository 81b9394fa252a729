"""Image encoders that turn a picture into a set of feature vectors for slot attention."""

from __future__ import annotations

import torch
from torch import nn

from deqkit.nn.positions import SoftPositionEmbed


class CNNEncoder(nn.Module):
    """CNN + soft position embedding + per-pixel MLP (Locatello et al. 2020): image ``[B,3,H,W]`` ->
    features ``[B,N,C]``.

    The first ``downsample`` convolutions have stride 2 (N = H W / 4^downsample): cheaper on a CPU.
    """

    def __init__(self, channels: int, layers: int = 4, kernel: int = 5, downsample: int = 0, in_channels: int = 3):
        super().__init__()
        convs: list[nn.Module] = []
        c_in = in_channels
        for i in range(layers):
            stride = 2 if i < downsample else 1
            convs += [nn.Conv2d(c_in, channels, kernel, stride=stride, padding=kernel // 2), nn.ReLU()]
            c_in = channels
        self.cnn = nn.Sequential(*convs)
        self.pos = SoftPositionEmbed(channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.pos(self.cnn(image).permute(0, 2, 3, 1))  # [B,h,w,C]
        return self.mlp(self.norm(x.flatten(1, 2)))
