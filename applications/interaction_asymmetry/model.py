"""The Transformer VAE of Brady et al., "Interaction Asymmetry" (2024), at CPU scale.

Encoder: CNN features with positions (``deqkit.nn.CNNEncoder``), then a Transformer whose K learned slot
queries cross-attend to the features and self-attend among themselves; each slot gets a Gaussian posterior.
Decoder: one query per pixel (a Fourier encoding of its position) cross-attends to the K slot latents with
the softmax over slots, no self-attention, then an MLP gives RGB. The regulariser penalises pixels that
attend to several slots: ``R = sum_{i<j} A_i A_j``. Shapes: B batch, N features, K slots, S latent width,
D model width, H x W image.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn

from deqkit.nn import Attention, CNNEncoder, fourier_features


def _mlp(dim_in: int, hidden: int, dim_out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(dim_in, hidden), nn.ReLU(), nn.Linear(hidden, dim_out))


class SlotTransformerEncoder(nn.Module):
    """Learned slot queries ``[K,D]`` -> ``layers`` x (cross-attention to the features, self-attention among
    slots, MLP), pre-norm residual blocks -> posterior mean and log-variance ``[B,K,S]`` each. ``scale``
    multiplies the logits of the cross-attention to the features; ``init_log_var`` is the log-variance
    the posterior starts from."""

    def __init__(self, num_slots: int, dim: int, latent_dim: int, layers: int = 2, heads: int = 1,
                 scale: float = 1.0, init_log_var: float = 0.0):
        super().__init__()
        self.queries = nn.Parameter(torch.randn(num_slots, dim) * dim ** -0.5)
        self.context_norm = nn.LayerNorm(dim)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm_cross": nn.LayerNorm(dim), "cross": Attention(dim, dim, heads, scale=scale),
            "norm_self": nn.LayerNorm(dim), "self": Attention(dim, dim, heads),
            "norm_mlp": nn.LayerNorm(dim), "mlp": _mlp(dim, 2 * dim, dim)}) for _ in range(layers))
        self.to_posterior = nn.Sequential(nn.LayerNorm(dim), nn.Linear(dim, 2 * latent_dim))
        with torch.no_grad():  # a small starting posterior variance: the decoder sees the means, not noise
            self.to_posterior[1].bias[latent_dim:].fill_(init_log_var)

    def forward(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        context = self.context_norm(features)
        slots = self.queries.expand(features.shape[0], -1, -1)
        for block in self.blocks:
            slots = slots + block["cross"](block["norm_cross"](slots), context)[0]
            normed = block["norm_self"](slots)
            slots = slots + block["self"](normed, normed)[0]
            slots = slots + block["mlp"](block["norm_mlp"](slots))
        mean, log_var = self.to_posterior(slots).chunk(2, dim=-1)
        return mean, log_var


class SlotQueryDecoder(nn.Module):
    """Per-pixel Fourier queries cross-attend to the slots (softmax over slots, no self-attention between
    pixels), ``layers`` times, then an MLP to RGB: ``z [B,K,S] -> (rgb [B,3,H,W], attn [B,K,H,W])``,
    ``attn`` averaged over heads and layers (sums to 1 over K). ``scale`` multiplies the attention logits."""

    def __init__(self, latent_dim: int, dim: int, size: int, layers: int = 2, heads: int = 1,
                 frequencies: int = 6, scale: float = 1.0):
        super().__init__()
        self.size = size
        self.register_buffer("positions", fourier_features(size, size, frequencies).flatten(0, 1)[None],
                             persistent=False)  # [1,HW,2+4F]
        self.embed = _mlp(2 + 4 * frequencies, dim, dim)
        self.slot_norm = nn.LayerNorm(latent_dim)
        self.blocks = nn.ModuleList(nn.ModuleDict({
            "norm_cross": nn.LayerNorm(dim), "cross": Attention(dim, latent_dim, heads, scale=scale),
            "norm_mlp": nn.LayerNorm(dim), "mlp": _mlp(dim, 2 * dim, dim)}) for _ in range(layers))
        self.to_rgb = nn.Sequential(nn.LayerNorm(dim), _mlp(dim, dim, 3))

    def forward(self, z: torch.Tensor, pixels: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
        """``pixels``: flat indices ``[P]`` of the pixels to decode (every pixel is decoded independently of
        the others, so training may decode a random subset); then ``rgb [B,3,P]`` and ``attn [B,K,P]``."""
        slots = self.slot_norm(z)
        positions = self.positions if pixels is None else self.positions[:, pixels]
        x = self.embed(positions)  # [1,P,D]: the same queries for every image
        attn = 0.0
        for block in self.blocks:
            out, weights = block["cross"](block["norm_cross"](x), slots)  # weights [B,H,P,K]
            x = x + out
            x = x + block["mlp"](block["norm_mlp"](x))
            attn = attn + weights.mean(1)
        rgb, attn = self.to_rgb(x).transpose(1, 2), (attn / len(self.blocks)).transpose(1, 2)
        if pixels is None:
            rgb, attn = rgb.unflatten(2, (self.size, self.size)), attn.unflatten(2, (self.size, self.size))
        return rgb, attn


class InteractionAsymmetryVAE(nn.Module):
    """``forward(image [B,3,H,W])`` returns a dict: ``recon [B,3,H,W]``, ``masks [B,K,H,W]`` (the decoder's
    attention), ``mean``/``log_var``/``z`` ``[B,K,S]`` (``z`` is a posterior sample in training, the mean in
    evaluation). ``step`` counts training steps (saved with the weights) for the α and β schedules."""

    def __init__(self, image_size: int, num_slots: int = 5, latent_dim: int = 32, dim: int = 64, *,
                 encoder_layers: int = 3, encoder_kernel: int = 3, encoder_downsample: int = 1,
                 transformer_layers: int = 2, decoder_layers: int = 2, heads: int = 1, frequencies: int = 6,
                 attn_scale: float = 1.0, encoder_attn_scale: float = 1.0, init_log_var: float = 0.0):
        super().__init__()
        self.cnn = CNNEncoder(dim, encoder_layers, encoder_kernel, encoder_downsample)
        # He initialisation: with PyTorch's default the CNN's output starts ~15x smaller than the position
        # embedding added to it, and the posterior means vary across images by 1% of their size (10x more
        # with He), so the decoder first learns to ignore the slots (docs/interaction_asymmetry.md)
        for conv in self.cnn.cnn:
            if isinstance(conv, nn.Conv2d):
                nn.init.kaiming_normal_(conv.weight, nonlinearity="relu")
                nn.init.zeros_(conv.bias)
        self.encoder = SlotTransformerEncoder(num_slots, dim, latent_dim, transformer_layers, heads,
                                              encoder_attn_scale, init_log_var)
        self.decoder = SlotQueryDecoder(latent_dim, dim, image_size, decoder_layers, heads, frequencies, attn_scale)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def forward(self, image: torch.Tensor, pixels: torch.Tensor | None = None) -> dict[str, Any]:
        """``pixels``: decode only these flat pixel indices ``[P]`` (``recon [B,3,P]``, ``masks [B,K,P]``)."""
        mean, log_var = self.encoder(self.cnn(image))
        z = mean + torch.randn_like(mean) * (0.5 * log_var).exp() if self.training else mean
        recon, masks = self.decoder(z, pixels)
        return {"recon": recon, "masks": masks, "mean": mean, "log_var": log_var, "z": z}


def interaction_penalty(masks: torch.Tensor) -> torch.Tensor:
    """``R`` per image: mean over pixels of ``sum_{i<j} A_i A_j = ((sum_k A_k)^2 - sum_k A_k^2) / 2`` for
    attention ``masks [B,K,...]`` (any pixel layout). ``Tensor[B]``."""
    pairs = (masks.sum(1).square() - masks.square().sum(1)) / 2
    return pairs.flatten(1).mean(1)


def gaussian_kl(mean: torch.Tensor, log_var: torch.Tensor) -> torch.Tensor:
    """KL(N(mean, exp(log_var)) || N(0, I)) summed over slots and latent dimensions. ``Tensor[B]``."""
    return 0.5 * (mean.square() + log_var.exp() - 1 - log_var).flatten(1).sum(1)
