"""The object-discovery autoencoder of Locatello et al. (NeurIPS 2020), with slot attention as a fixed point.

Encoder, slot attention and decoders are the core's reusable modules (:mod:`deqkit.nn`); this file only
assembles them. Shapes: B batch, N inputs (pixels), K slots, S slot width, H x W image.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from deqkit.backward import BackwardEstimator
from deqkit.nn import (CNNEncoder, MLPBroadcastDecoder, SlotAttention, SlotInit, SpatialBroadcastDecoder,
                       alpha_composite, slot_frames)
from deqkit.train import ConfigError  # a usage error: one line, exit status 2 from the CLI


class SlotAutoencoder(nn.Module):
    """Encoder -> slot attention -> per-slot broadcast decoder, mixed by a softmax over slots.

    ``forward(image [B,3,H,W])`` returns a dict: ``recon [B,3,H,W]``, ``masks [B,K,H,W]`` (sum to 1 over
    K), ``rgb [B,K,3,H,W]``, ``slots [B,K,S]``, ``attn [B,K,N]`` and the solver ``info``.
    """

    def __init__(self, image_size: int, num_slots: int = 5, slot_dim: int = 64, channels: int = 64,
                 mlp_hidden: int = 128, iters: int = 3, *, encoder_layers: int = 4, encoder_kernel: int = 5,
                 encoder_downsample: int = 0, decoder_channels: int | None = None, decoder_grid: int = 8,
                 decoder_full_res_convs: int = 1, decoder: Literal["conv", "mlp"] = "conv",
                 decoder_positions: Literal["absolute", "relative"] = "absolute",
                 solver: str = "iteration", backward: str | BackwardEstimator = "neumann", tol: float | None = None,
                 init: SlotInit = "gaussian", layer_norm_eps: float = 1e-5, gaussian_init: str = "normal"):
        super().__init__()
        self.encoder = CNNEncoder(channels, encoder_layers, encoder_kernel, encoder_downsample)
        self.slot_attention = SlotAttention(num_slots, channels, slot_dim, mlp_hidden, iters,
                                            solver=solver, backward=backward, tol=tol, init=init,
                                            layer_norm_eps=layer_norm_eps, gaussian_init=gaussian_init)
        width = decoder_channels or channels
        if decoder_positions not in ("absolute", "relative") or (decoder_positions == "relative" and decoder != "mlp"):
            raise ConfigError(f"SlotAutoencoder: decoder_positions={decoder_positions!r} is invalid; use 'absolute', "
                              "or 'relative' with decoder='mlp'")
        self.relative = decoder_positions == "relative"
        if decoder == "conv":
            self.decoder = SpatialBroadcastDecoder(slot_dim, width, image_size, decoder_grid, decoder_full_res_convs)
        elif decoder == "mlp":
            self.decoder = MLPBroadcastDecoder(slot_dim, width, image_size, decoder_grid, self.relative)
        else:
            raise ConfigError(f"SlotAutoencoder: unknown decoder {decoder!r}; use 'conv' or 'mlp'")

    def forward(self, image: torch.Tensor, slots: torch.Tensor | None = None) -> dict[str, Any]:
        features = self.encoder(image)
        slots, attn, info = self.slot_attention(features, slots)
        if self.relative:
            side = math.isqrt(features.shape[1])  # the encoder's square grid of inputs
            rgb, alpha = self.decoder(slots, slot_frames(attn, side, side))
        else:
            rgb, alpha = self.decoder(slots)
        recon, masks = alpha_composite(rgb, alpha)  # slots compete for each pixel
        return {"recon": recon, "masks": masks, "rgb": rgb, "slots": slots, "attn": attn, "info": info}


def reconstruction_loss(out: dict[str, Any], image: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the mixture reconstruction (the paper's only training signal)."""
    return F.mse_loss(out["recon"], image)
