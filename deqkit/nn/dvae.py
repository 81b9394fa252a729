"""A discrete VAE (as in SLATE, Singh, Deng & Ahn, ICLR 2022): each ``patch x patch`` patch of an image
becomes one of ``vocab_size`` tokens; a relaxed (Gumbel-softmax) one-hot code is decoded back to pixels.

Shapes: B batch, V vocabulary, h x w token grid (H/patch x W/patch), H x W image.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from deqkit.errors import ConfigError


def cosine_anneal(step: int, start: float, end: float, start_step: int, final_step: int) -> float:
    """``start`` until ``start_step``, a half cosine to ``end`` at ``final_step``, then ``end`` (SLATE's
    schedule of the Gumbel-softmax temperature)."""
    if step < start_step:
        return start
    if step >= final_step:
        return end
    progress = (step - start_step) / (final_step - start_step)
    return end + 0.5 * (start - end) * (1.0 + math.cos(math.pi * progress))


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.ReLU()]


class DiscreteVAE(nn.Module):
    """SLATE's dVAE: a ``patch x patch`` stride-``patch`` convolution and ``depth`` 1x1 convolutions give
    token logits ``[B,V,h,w]``; the decoder maps a (relaxed) one-hot code back to ``[B,C,H,W]`` with 3x3
    and 1x1 convolutions and one pixel shuffle (x2) per factor 2 of the patch.

    ``forward(image, tau)`` returns ``logits``, ``z`` (the code decoded: a Gumbel-softmax sample at
    temperature ``tau`` in training, the one-hot of ``argmax(logits)`` in eval mode), ``tokens [B,h,w]``
    (argmax of ``z``: a hard Gumbel sample in training) and ``recon``.
    """

    def __init__(self, vocab_size: int, patch: int = 4, hidden: int = 64, depth: int = 6, in_channels: int = 3):
        super().__init__()
        ups = math.log2(patch) if patch >= 1 else -1.0
        if ups != int(ups) or ups < 1:
            raise ConfigError(f"DiscreteVAE: patch must be a power of 2 >= 2, got {patch}")
        self.vocab_size, self.patch = vocab_size, patch
        enc = _conv(in_channels, hidden, patch, patch)
        for _ in range(depth):
            enc += _conv(hidden, hidden, 1)
        self.encoder = nn.Sequential(*enc, nn.Conv2d(hidden, vocab_size, 1))
        dec = _conv(vocab_size, hidden, 1)
        for _ in range(int(ups)):
            dec += _conv(hidden, hidden, 3, padding=1) + _conv(hidden, hidden, 1) + _conv(hidden, 4 * hidden, 1)
            dec.append(nn.PixelShuffle(2))
        self.decoder = nn.Sequential(*dec, nn.Conv2d(hidden, in_channels, 1))

    def decode_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B,h,w]`` -> image ``[B,C,H,W]``."""
        z = F.one_hot(tokens, self.vocab_size).permute(0, 3, 1, 2)
        return self.decoder(z.to(self.decoder[0].weight.dtype))

    def forward(self, image: torch.Tensor, tau: float = 1.0) -> dict[str, torch.Tensor]:
        logits = self.encoder(image)
        if self.training:
            z = F.gumbel_softmax(logits, tau=tau, hard=False, dim=1)
        else:
            z = F.one_hot(logits.argmax(1), self.vocab_size).permute(0, 3, 1, 2).to(logits.dtype)
        return {"logits": logits, "z": z, "tokens": z.argmax(1), "recon": self.decoder(z)}
