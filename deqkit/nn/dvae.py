"""A discrete VAE (as in SLATE, Singh, Deng & Ahn, ICLR 2022): each ``patch x patch`` patch of an image
becomes one of ``vocab_size`` tokens; a relaxed (Gumbel-softmax) one-hot code is decoded back to pixels.

Shapes: B batch, V vocabulary, h x w token grid (H/patch x W/patch), H x W image.
"""

from __future__ import annotations

import math
from typing import Literal

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


DVAEBlocks = Literal["conv", "slate"]


def _conv(c_in: int, c_out: int, kernel: int, stride: int = 1, padding: int = 0,
          blocks: DVAEBlocks = "conv") -> list[nn.Module]:
    """A hidden convolution and its ReLU; ``blocks="slate"``: SLATE's ``Conv2dBlock`` (a bias-free
    convolution with Kaiming-uniform weights, GroupNorm with one group, ReLU)."""
    if blocks == "conv":
        return [nn.Conv2d(c_in, c_out, kernel, stride, padding), nn.ReLU()]
    conv = nn.Conv2d(c_in, c_out, kernel, stride, padding, bias=False)
    nn.init.kaiming_uniform_(conv.weight, nonlinearity="relu")
    return [conv, nn.GroupNorm(1, c_out), nn.ReLU()]


def _output_conv(c_in: int, c_out: int, blocks: DVAEBlocks) -> nn.Conv2d:
    conv = nn.Conv2d(c_in, c_out, 1)
    if blocks == "slate":  # SLATE's conv2d(): Xavier-uniform weights, zero bias
        nn.init.xavier_uniform_(conv.weight)
        nn.init.zeros_(conv.bias)
    return conv


class DiscreteVAE(nn.Module):
    """SLATE's dVAE: a ``patch x patch`` stride-``patch`` convolution and ``depth`` 1x1 convolutions give
    token logits ``[B,V,h,w]``; the decoder maps a (relaxed) one-hot code back to ``[B,C,H,W]`` with 3x3
    and 1x1 convolutions and one pixel shuffle (x2) per factor 2 of the patch.

    ``forward(image, tau)`` returns ``logits``, ``z`` (the code decoded: a Gumbel-softmax sample at
    temperature ``tau`` in training, the one-hot of ``argmax(logits)`` in eval mode), ``tokens [B,h,w]``
    (argmax of ``z``: a hard Gumbel sample in training) and ``recon``.

    ``blocks="slate"`` builds SLATE's code (``dvae.py``, ``utils.Conv2dBlock``) exactly: GroupNorm (one
    group) after every hidden convolution, Kaiming/Xavier initialisation, and two hidden 1x1 convolutions
    per upsampling stage instead of one. ``"conv"`` (the default) is the plain layout above.
    """

    def __init__(self, vocab_size: int, patch: int = 4, hidden: int = 64, depth: int = 6, in_channels: int = 3,
                 blocks: DVAEBlocks = "conv"):
        super().__init__()
        ups = math.log2(patch) if patch >= 1 else -1.0
        if ups != int(ups) or ups < 1:
            raise ConfigError(f"DiscreteVAE: patch must be a power of 2 >= 2, got {patch}")
        if blocks not in ("conv", "slate"):
            raise ConfigError(f"DiscreteVAE: unknown blocks {blocks!r}; use 'conv' or 'slate'")
        self.vocab_size, self.patch = vocab_size, patch
        enc = _conv(in_channels, hidden, patch, patch, blocks=blocks)
        for _ in range(depth):
            enc += _conv(hidden, hidden, 1, blocks=blocks)
        self.encoder = nn.Sequential(*enc, _output_conv(hidden, vocab_size, blocks))
        dec = _conv(vocab_size, hidden, 1, blocks=blocks)
        hidden_1x1 = 2 if blocks == "slate" else 1
        for _ in range(int(ups)):
            dec += _conv(hidden, hidden, 3, padding=1, blocks=blocks)
            for _ in range(hidden_1x1):
                dec += _conv(hidden, hidden, 1, blocks=blocks)
            dec += _conv(hidden, 4 * hidden, 1, blocks=blocks)
            dec.append(nn.PixelShuffle(2))
        self.decoder = nn.Sequential(*dec, _output_conv(hidden, in_channels, blocks))

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
