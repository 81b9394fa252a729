"""J-ARI and JIS from the decoder Jacobian: the batched forward-mode norms equal a brute-force autograd
Jacobian, and the scores take their hand-computed values on decoders whose slot dependence is known."""

from __future__ import annotations

import pytest
import torch

from torch import nn

from deqkit.metrics import (fg_ari, jacobian_ari, jacobian_interaction_score, jacobian_masks,
                            slot_jacobian_norms)
from deqkit.nn import Attention, fourier_features


class TinyDecoder(nn.Module):
    """Per-pixel Fourier queries attend to the slots (softmax over slots), then LayerNorm and RGB."""

    def __init__(self, latent_dim: int, size: int):
        super().__init__()
        self.size = size
        self.register_buffer("positions", fourier_features(size, size, 2).flatten(0, 1)[None])
        self.embed = nn.Linear(10, 8)
        self.attend = Attention(8, latent_dim, heads=2)
        self.to_rgb = nn.Sequential(nn.LayerNorm(8), nn.Linear(8, 3))

    def forward(self, z):
        x = self.embed(self.positions)
        x = x + self.attend(x, z)[0]
        return self.to_rgb(x).transpose(1, 2).unflatten(2, (self.size, self.size))


def brute_force_norms(decode, slots):
    """Reverse-mode Jacobian of each image separately: [C,H,W,K,S] -> norm over C and S."""
    rows = []
    for z in slots:
        jac = torch.autograd.functional.jacobian(lambda one: decode(one[None])[0], z)  # [C,H,W,K,S]
        rows.append(jac.square().sum((0, -1)).sqrt().permute(2, 0, 1))  # [K,H,W]
    return torch.stack(rows)


@pytest.mark.parametrize("chunk_size", [None, 5])
def test_forward_mode_norms_equal_a_brute_force_jacobian(chunk_size):
    torch.manual_seed(0)
    decode = TinyDecoder(latent_dim=3, size=4)
    slots = torch.randn(2, 3, 3)
    with torch.no_grad():  # as under the trainer's evaluation
        norms = slot_jacobian_norms(decode, slots, chunk_size=chunk_size)
    assert norms.shape == (2, 3, 4, 4)
    torch.testing.assert_close(norms, brute_force_norms(decode, slots), rtol=1e-4, atol=1e-6)


def test_a_decoder_that_draws_each_pixel_from_one_slot_scores_one():
    owner = torch.tensor([[0, 0, 1, 1], [0, 0, 1, 1], [2, 2, 2, 2], [2, 2, 2, 2]])  # slot drawing each pixel
    weight = torch.randn(3, 2)

    def decode(z):  # [B,3,2] -> [B,3,4,4]: pixel p is tanh(slot owner[p] @ weight)
        per_slot = torch.tanh(z @ weight.T)  # [B,K,3]
        return per_slot[:, owner].permute(0, 3, 1, 2)

    slots = torch.randn(2, 3, 2)
    norms = slot_jacobian_norms(decode, slots)
    masks = jacobian_masks(norms)
    torch.testing.assert_close(masks.argmax(1), owner.expand(2, 4, 4))
    true = (owner + 1).expand(2, 4, 4)  # every pixel foreground, one object per slot
    torch.testing.assert_close(jacobian_ari(true, norms), torch.ones(2))
    torch.testing.assert_close(jacobian_interaction_score(norms), torch.ones(2))


def test_a_decoder_that_mixes_all_slots_equally_scores_zero():
    def decode(z):  # every pixel is the same function of the sum of the slots
        return torch.tanh(z.sum(1)).mean(-1)[:, None, None, None].expand(-1, 3, 2, 2)

    norms = slot_jacobian_norms(decode, torch.randn(2, 4, 3))
    torch.testing.assert_close(jacobian_interaction_score(norms), torch.zeros(2), atol=1e-6, rtol=0)


def test_interaction_score_and_masks_by_hand():
    norms = torch.tensor([[[3.0, 1.0, 0.0], [1.0, 1.0, 0.0]]])  # [B=1,K=2,P=3]; pixel 3 depends on nothing
    torch.testing.assert_close(jacobian_masks(norms)[0, :, 2], torch.tensor([0.5, 0.5]))
    # shares of the largest slot: 0.75, 0.5, 0.5 -> rescaled 0.5, 0, 0
    torch.testing.assert_close(jacobian_interaction_score(norms), torch.tensor([0.5 / 3]))
    torch.testing.assert_close(jacobian_interaction_score(norms, torch.tensor([[1.0, 0.0, 0.0]])),
                               torch.tensor([0.5]))
    true = torch.tensor([[1, 2, 2]])
    torch.testing.assert_close(jacobian_ari(true, norms), fg_ari(true, torch.tensor([[0, 0, 0]])))
    with pytest.raises(ValueError, match="2 slots"):
        jacobian_interaction_score(torch.ones(1, 1, 3))
