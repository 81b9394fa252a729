"""A slot-mixture decoder of discrete tokens: the spatial broadcast decoder of slot attention, for a grid of
tokens instead of pixels.

Each slot, broadcast to every position, gives token logits and an alpha logit per position (one MLP
shared by slots and positions); the softmax of alpha over slots weighs the slots' token distributions.
Unlike an autoregressive decoder it cannot predict a token from its neighbours, and its weights are a
mask per slot. Shapes: B batch, K slots, S slot width, T tokens, V vocabulary, H hidden width.
"""

from __future__ import annotations

import torch
from torch import nn


class SlotMixtureTokenDecoder(nn.Module):
    """``forward(slots [B,K,S]) -> (log_probs [B,T,V], masks [B,K,T])``: the mixture's log-probabilities of
    every token (usable as logits: they are already normalised) and each slot's weight per position."""

    def __init__(self, slot_dim: int, num_tokens: int, vocab_size: int, hidden: int = 128):
        super().__init__()
        self.num_tokens, self.vocab_size = num_tokens, vocab_size
        self.slot_in = nn.Linear(slot_dim, hidden)
        self.positions = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, num_tokens, hidden)))
        self.mlp = nn.Sequential(nn.ReLU(), nn.Linear(hidden, hidden), nn.ReLU(), nn.Linear(hidden, vocab_size + 1))

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        out = self.mlp(self.slot_in(slots)[:, :, None] + self.positions[:, None])  # [B,K,T,V+1]
        log_weights = out[..., -1].log_softmax(dim=1)  # [B,K,T]
        log_probs = torch.logsumexp(log_weights[..., None] + out[..., :-1].log_softmax(-1), dim=1)
        return log_probs, log_weights.exp()

    @torch.no_grad()
    def generate(self, slots: torch.Tensor) -> torch.Tensor:
        """The most likely token at every position ``[B,T]`` (all at once)."""
        return self.forward(slots)[0].argmax(-1)
