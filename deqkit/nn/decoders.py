"""Spatial broadcast decoders: each slot is decoded alone to an RGB image and an alpha logit per pixel.

The caller mixes slots with a softmax of the alpha logits over slots (see ``alpha_composite``).
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deqkit.errors import ConfigError
from deqkit.nn.positions import SoftPositionEmbed, position_grid


def upsampling_steps(size: int, grid: int) -> int:
    """How many stride-2 upsamplings take a ``grid x grid`` broadcast to ``size x size`` (a ConfigError
    unless ``size`` is ``grid`` times a power of 2)."""
    ups = math.log2(size / grid) if grid >= 1 else -1.0
    if ups != int(ups) or ups < 0:
        raise ConfigError(f"image size {size} must be decoder_grid={grid} times a power of 2")
    return int(ups)


def alpha_composite(rgb: torch.Tensor, alpha: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Mix per-slot images ``rgb [B,K,C,H,W]`` by ``softmax_K(alpha [B,K,1,H,W])``: (image ``[B,C,H,W]``,
    masks ``[B,K,H,W]`` summing to 1 over slots)."""
    masks = alpha.softmax(dim=1)
    return (masks * rgb).sum(dim=1), masks.squeeze(2)


class SpatialBroadcastDecoder(nn.Module):
    """Each slot ``[S]`` is tiled on a ``grid x grid`` map, given positions, and upsampled by stride-2
    transposed convolutions to ``size x size``, then ``full_res_convs`` 3x3 convolutions and a 3x3 output
    layer give RGB ``[3]`` and an alpha logit per pixel (Watters et al. 2019, as in Locatello et al. 2020).
    With ``full_res_convs=0`` the last transposed convolution is the output layer (about 3x cheaper at
    32 px on a CPU)."""

    def __init__(self, slot_dim: int, channels: int, size: int, grid: int = 8, full_res_convs: int = 1):
        super().__init__()
        ups = upsampling_steps(size, grid)
        self.grid = grid
        self.pos = SoftPositionEmbed(slot_dim)
        layers: list[nn.Module] = []
        c_in = slot_dim
        for i in range(ups):
            # with no full-resolution convolutions the last upsampling writes the output directly (cheap)
            is_output = i == ups - 1 and full_res_convs == 0
            layers.append(nn.ConvTranspose2d(c_in, 4 if is_output else channels, 5, stride=2, padding=2,
                                             output_padding=1))
            layers += [] if is_output else [nn.ReLU()]
            c_in = channels
        for _ in range(full_res_convs):
            layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU()]
            c_in = channels
        if ups == 0 or full_res_convs > 0:
            layers.append(nn.Conv2d(c_in, 4, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """slots ``[B,K,S]`` -> (rgb ``[B,K,3,H,W]``, alpha logits ``[B,K,1,H,W]``)."""
        b, k, s = slots.shape
        x = slots.reshape(b * k, 1, 1, s).expand(-1, self.grid, self.grid, -1)
        x = self.net(self.pos(x).permute(0, 3, 1, 2))
        x = x.reshape(b, k, 4, *x.shape[-2:])
        return x[:, :, :3], x[:, :, 3:]


class MLPBroadcastDecoder(nn.Module):
    """Each slot ``[S]`` is broadcast on a ``grid x grid`` map, a per-position MLP of (slot, position) maps
    it to ``channels`` features (two layers, i.e. 1x1 convolutions), and 4x4 stride-2 transposed
    convolutions upsample to ``size x size``, the last one writing RGB ``[3]`` and an alpha logit.

    The first layer of ``[slot, position] -> channels`` is computed as ``W_s slot + W_p position`` (one
    product per slot plus one per position, not per (slot, position) pair). At 32 px on a CPU it is
    ~5x cheaper than :class:`SpatialBroadcastDecoder` (timings in docs/slot_attention.md).

    ``relative=True``: positions are given in each slot's own frame, ``(p - centre) / spread`` of its
    attention (:func:`deqkit.nn.slot_frames`), as in the decoder of Invariant Slot Attention (Biza et al.,
    ICML 2023), so a shape is learned once wherever it appears.
    """

    def __init__(self, slot_dim: int, channels: int, size: int, grid: int, relative: bool = False):
        super().__init__()
        ups = upsampling_steps(size, grid)
        self.grid = grid
        self.relative = relative
        self.slot_in = nn.Linear(slot_dim, channels)
        self.pos_in = nn.Linear(2 if relative else 4, channels, bias=False)
        self.hidden = nn.Linear(channels, channels)
        layers: list[nn.Module] = []
        for i in range(ups):
            last = i == ups - 1
            layers += [nn.ConvTranspose2d(channels, 4 if last else channels, 4, stride=2, padding=1)]
            layers += [] if last else [nn.ReLU()]
        self.out = nn.Sequential(*layers) if ups else nn.Conv2d(channels, 4, 1)

    def forward(self, slots: torch.Tensor, frames: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """slots ``[B,K,S]`` (and, if ``relative``, ``slot_frames``) -> (rgb ``[B,K,3,H,W]``, alpha logits
        ``[B,K,1,H,W]``)."""
        b, k, _ = slots.shape
        x = self.slot_in(slots)[:, :, None, None, :]  # [B,K,1,1,C]
        if self.relative:
            if frames is None:
                raise ValueError("MLPBroadcastDecoder(relative=True) needs the slots' frames (slot_frames)")
            centre, spread = frames
            axis = torch.linspace(0.0, 1.0, self.grid, device=slots.device, dtype=slots.dtype)
            rel = (axis - centre[..., None]) / spread[..., None]  # [B,K,2,g]: (y, x) in the slot's frame
            w_y, w_x = self.pos_in.weight.T  # W_p rel = rel_y w_y + rel_x w_x: no [B,K,g,g,2] tensor
            x = x + rel[:, :, 0, :, None, None] * w_y + rel[:, :, 1, None, :, None] * w_x
        else:
            x = x + self.pos_in(position_grid(self.grid, self.grid, slots.device).to(slots.dtype))
        x = F.relu(x)  # [B,K,g,g,C]
        x = F.relu(self.hidden(x)).flatten(0, 1).permute(0, 3, 1, 2)  # [BK,C,g,g]
        x = self.out(x)
        x = x.reshape(b, k, 4, *x.shape[-2:])
        return x[:, :, :3], x[:, :, 3:]
