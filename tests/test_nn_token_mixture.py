"""deqkit.nn.SlotMixtureTokenDecoder: a normalised mixture over slots, invariant to the slots' order, whose
weights are masks; with one slot it is that slot's own token distribution."""

from __future__ import annotations

import torch

from deqkit.nn import SlotMixtureTokenDecoder

torch.set_num_threads(1)


def _decoder() -> SlotMixtureTokenDecoder:
    torch.manual_seed(0)
    return SlotMixtureTokenDecoder(slot_dim=8, num_tokens=6, vocab_size=5, hidden=16)


def test_log_probs_are_normalised_and_masks_sum_to_one():
    log_probs, masks = _decoder()(torch.randn(2, 3, 8))
    assert log_probs.shape == (2, 6, 5) and masks.shape == (2, 3, 6)
    torch.testing.assert_close(log_probs.logsumexp(-1), torch.zeros(2, 6))
    torch.testing.assert_close(masks.sum(1), torch.ones(2, 6))


def test_slot_order_permutes_the_masks_only():
    dec, slots = _decoder(), torch.randn(2, 3, 8)
    order = torch.tensor([2, 0, 1])
    log_probs, masks = dec(slots)
    log_probs_p, masks_p = dec(slots[:, order])
    torch.testing.assert_close(log_probs_p, log_probs)
    torch.testing.assert_close(masks_p, masks[:, order])


def test_one_slot_is_its_own_distribution_and_generation_is_the_argmax():
    dec, slots = _decoder(), torch.randn(2, 1, 8)
    own = dec.mlp(dec.slot_in(slots)[:, :, None] + dec.positions[:, None])[:, 0, :, :-1].log_softmax(-1)
    torch.testing.assert_close(dec(slots)[0], own)
    assert torch.equal(dec.generate(slots), own.argmax(-1))
