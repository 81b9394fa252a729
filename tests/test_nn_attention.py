"""deqkit.nn.Attention and fourier_features: attention equals torch's MultiheadAttention with the same
weights, its softmax is over the context (slots), it is equivariant to permuting them, and the Fourier
encoding has the hand-computed values."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

from deqkit.nn import Attention, fourier_features


@pytest.mark.parametrize("heads", [1, 2])
def test_attention_matches_torch_multihead_attention(heads):
    torch.manual_seed(0)
    attention = Attention(8, heads=heads)
    reference = nn.MultiheadAttention(8, heads, bias=True, batch_first=True)
    with torch.no_grad():
        reference.in_proj_weight.copy_(torch.cat([attention.to_q.weight, attention.to_k.weight, attention.to_v.weight]))
        reference.in_proj_bias.zero_()
        reference.out_proj.weight.copy_(attention.to_out.weight)
        reference.out_proj.bias.copy_(attention.to_out.bias)
    x, context = torch.randn(3, 5, 8), torch.randn(3, 4, 8)
    out, weights = attention(x, context)
    expected, expected_weights = reference(x, context, context, average_attn_weights=False)
    torch.testing.assert_close(out, expected)
    torch.testing.assert_close(weights, expected_weights)
    torch.testing.assert_close(weights.sum(-1), torch.ones(3, heads, 5))


def test_softmax_over_slots_is_equivariant_and_scale_sharpens():
    torch.manual_seed(0)
    attention = Attention(8, context_dim=6, heads=2)
    pixels, slots = torch.randn(1, 10, 8), torch.randn(2, 3, 6)
    out, weights = attention(pixels, slots)  # one set of queries broadcast over 2 images
    perm = torch.tensor([2, 0, 1])
    out_p, weights_p = attention(pixels, slots[:, perm])
    torch.testing.assert_close(out_p, out)  # the output does not depend on the order of the slots
    torch.testing.assert_close(weights_p, weights[..., perm])
    torch.testing.assert_close(attention(pixels.expand(2, -1, -1), slots)[0], out)
    sharp = Attention(8, context_dim=6, heads=2, scale=3.0)
    sharp.load_state_dict(attention.state_dict())
    logits = weights.log()
    torch.testing.assert_close(sharp(pixels, slots)[1], (3 * logits).softmax(-1))  # logits x 3 (up to a constant)


def test_fourier_features_have_the_hand_computed_values():
    feats = fourier_features(2, 4, 2)
    assert feats.shape == (2, 4, 2 + 4 * 2)
    y, x = -0.5, -0.25  # pixel (0, 1): centres at (0.5/2, 1.5/4) of the side, mapped to [-1, 1]
    angles = [math.pi * y, 2 * math.pi * y, math.pi * x, 2 * math.pi * x]
    expected = [y, x] + [math.sin(a) for a in angles] + [math.cos(a) for a in angles]
    torch.testing.assert_close(feats[0, 1], torch.tensor(expected))
