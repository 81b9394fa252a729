"""deqkit.nn.dvae: token grid and reconstruction shapes, deterministic argmax codes in eval mode, Gumbel
samples that harden as the temperature falls, and the cosine temperature schedule."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from deqkit.nn import DiscreteVAE, cosine_anneal


def test_shapes_and_eval_codes_are_the_argmax_one_hot():
    torch.manual_seed(0)
    dvae = DiscreteVAE(vocab_size=12, patch=4, hidden=8, depth=2).eval()
    image = torch.rand(2, 3, 16, 16)
    out = dvae(image, tau=0.5)
    assert out["logits"].shape == (2, 12, 4, 4) and out["recon"].shape == (2, 3, 16, 16)
    assert torch.equal(out["tokens"], out["logits"].argmax(1))
    torch.testing.assert_close(out["recon"], dvae.decode_tokens(out["tokens"]))


def test_training_codes_are_gumbel_samples_that_harden_as_tau_falls():
    torch.manual_seed(0)
    dvae = DiscreteVAE(vocab_size=12, patch=2, hidden=8, depth=1).train()
    image = torch.rand(4, 3, 8, 8)
    hot = dvae(image, tau=5.0)["z"]
    cold = dvae(image, tau=0.05)["z"]
    torch.testing.assert_close(hot.sum(1), torch.ones(4, 4, 4))
    assert cold.max(1).values.mean() > 0.9 > hot.max(1).values.mean()
    out = dvae(image, tau=1.0)
    out["recon"].square().mean().backward()
    assert dvae.encoder[0].weight.grad.abs().sum() > 0  # the relaxation passes gradient to the encoder


def test_patch_must_be_a_power_of_two():
    with pytest.raises(ValueError, match="power of 2"):
        DiscreteVAE(8, patch=3)


def test_cosine_anneal_by_hand():
    assert cosine_anneal(0, 1.0, 0.1, 0, 100) == 1.0
    assert cosine_anneal(50, 1.0, 0.1, 0, 100) == pytest.approx(0.55)
    assert cosine_anneal(25, 1.0, 0.1, 0, 100) == pytest.approx(0.1 + 0.45 * (1 + math.cos(math.pi / 4)))
    assert cosine_anneal(500, 1.0, 0.1, 0, 100) == 0.1
    assert cosine_anneal(5, 1.0, 0.1, 10, 100) == 1.0


def test_slate_blocks_are_slates_layout():
    plain, slate = DiscreteVAE(32, patch=4, hidden=16), DiscreteVAE(32, patch=4, hidden=16, blocks="slate")
    convs = lambda seq: [(m.kernel_size[0], m.bias is None) for m in seq if isinstance(m, torch.nn.Conv2d)]  # noqa: E731
    # decoder: 1x1 in, then per x2 stage a 3x3, hidden 1x1s and a 1x1 to 4x channels; 1x1 out
    assert convs(plain.decoder) == [(1, False)] + [(3, False), (1, False), (1, False)] * 2 + [(1, False)]
    assert convs(slate.decoder) == [(1, True)] + [(3, True), (1, True), (1, True), (1, True)] * 2 + [(1, False)]
    norms = [m for m in slate.modules() if isinstance(m, torch.nn.GroupNorm)]
    assert len(norms) == 7 + 9 and all(m.num_groups == 1 for m in norms)
    assert not any(isinstance(m, torch.nn.GroupNorm) for m in plain.modules())
    out = slate(torch.rand(2, 3, 16, 16), tau=0.5)
    assert out["recon"].shape == (2, 3, 16, 16) and out["tokens"].shape == (2, 4, 4)
    with pytest.raises(Exception, match="blocks"):
        DiscreteVAE(32, blocks="groupnorm")
