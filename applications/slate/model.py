"""SLATE (Singh, Deng & Ahn, ICLR 2022) with slot attention as a fixed point (Chang, Griffiths & Levine,
NeurIPS 2022: ``backward="unrolled"`` is vanilla, ``"neumann"`` implicit).

dVAE tokens -> dictionary + position embedding -> slot attention -> slots; an image-GPT decoder predicts
the tokens from the slots. The pieces are the core's (:mod:`deqkit.nn`); this file assembles them.
Shapes: B batch, h x w token grid (T = hw tokens), V vocabulary, K slots, D model width.
"""

from __future__ import annotations

from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deqkit.nn import DiscreteVAE, ImageGPT, SlotAttention, SlotMixtureTokenDecoder, SoftPositionEmbed, cosine_anneal


class Slate(nn.Module):
    """``forward(image [B,3,H,W])`` returns ``dvae`` (the dVAE's outputs: ``tokens [B,h,w]``, ``recon``),
    ``logits [B,T,V]`` of the tokens given the slots, ``slots [B,K,S]``, ``attn [B,K,T]`` (rows sum to 1),
    ``masks [B,K,T]`` (softmax over slots: each token's share per slot, SLATE's attention maps) and ``info``.

    The Gumbel temperature follows ``cosine_anneal`` of the training-step counter ``step`` (a buffer, so it
    is checkpointed), which :func:`slate_loss` advances in training mode.

    ``masks="final"`` recomputes the attention from the returned slots; ``"last_iteration"`` is SLATE's
    (``slate.py`` returns the attention of the last slot-attention iteration, computed from the slots
    *before* the last update): the slots after ``iters - 1`` plain updates from the same start.
    """

    def __init__(self, image_size: int, vocab_size: int = 64, patch: int = 4, dvae_hidden: int = 64,
                 d_model: int = 64, num_heads: int = 4, num_blocks: int = 2, dropout: float = 0.1,
                 num_slots: int = 5, slot_dim: int = 64, mlp_hidden: int = 128, iters: int = 3, *,
                 solver: str = "iteration", backward: str = "neumann", tol: float | None = None,
                 init: str = "gaussian", tau: tuple[float, float, int] = (1.0, 0.1, 30_000),
                 context_dropout: float = 0.0, decoder: str = "gpt", slot_positions: str = "learned",
                 token_convs: int = 0, masks: str = "final", dvae_blocks: str = "conv", gpt_activation: str = "gelu",
                 gaussian_init: str = "normal"):
        super().__init__()
        if masks not in ("final", "last_iteration"):
            raise ValueError(f"unknown masks {masks!r}; use 'final' or 'last_iteration'")
        self.grid, self.iters, self.mask_source = image_size // patch, iters, masks
        self.tau_schedule = tau
        self.dvae = DiscreteVAE(vocab_size, patch, dvae_hidden, blocks=dvae_blocks)
        if decoder not in ("gpt", "mixture"):
            raise ValueError(f"unknown decoder {decoder!r}; use 'gpt' or 'mixture'")
        # the mixture decoder uses only the image-GPT's token embedding (to feed slot attention); the GPT's
        # head and ``slot_proj`` then get no gradient (kept so that both decoders share one state-dict layout)
        self.gpt = ImageGPT(vocab_size, self.grid**2, d_model, num_heads, num_blocks if decoder == "gpt" else 0,
                            dropout, context_dropout, gpt_activation)
        self.mixture = (SlotMixtureTokenDecoder(slot_dim, self.grid**2, vocab_size, 2 * d_model)
                        if decoder == "mixture" else None)
        # SLATE's slot attention encoder: LayerNorm + MLP on the token embeddings, then slot attention
        if slot_positions not in ("learned", "soft"):
            raise ValueError(f"unknown slot_positions {slot_positions!r}; use 'learned' or 'soft'")
        # "soft": slot attention reads the dictionary vectors plus a linear map of the (y, x) coordinates
        # (Locatello et al.), smooth in space from the start, instead of the decoder's learned positions
        self.slot_positions = SoftPositionEmbed(d_model) if slot_positions == "soft" else None
        # optional 3x3 convolutions over the grid of token embeddings: each input then also sees its
        # neighbours (an object's edge tokens and its interior tokens look alike), as a CNN encoder's would
        convs: list[nn.Module] = []
        for _ in range(token_convs):
            convs += [nn.Conv2d(d_model, d_model, 3, padding=1), nn.ReLU()]
        self.token_convs = nn.Sequential(*convs) if convs else None
        self.slot_input = nn.Sequential(nn.LayerNorm(d_model), nn.Linear(d_model, d_model), nn.ReLU(),
                                        nn.Linear(d_model, d_model))
        self.slot_attention = SlotAttention(num_slots, d_model, slot_dim, mlp_hidden, iters,
                                            solver=solver, backward=backward, tol=tol, init=init,
                                            gaussian_init=gaussian_init)
        self.slot_proj = nn.Linear(slot_dim, d_model, bias=False)
        self.register_buffer("step", torch.zeros((), dtype=torch.long))

    def tau(self) -> float:
        start, end, steps = self.tau_schedule
        return cosine_anneal(int(self.step), start, end, 0, steps)

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        dvae = self.dvae(image, self.tau())
        tokens = dvae["tokens"].flatten(1).detach()  # no gradient from the transformer into the dVAE
        # [B,1+T,D], shared by slot attention (learned positions) and the image-GPT; neither reads it with
        # the mixture decoder and soft positions, so it is not computed then
        needs_embedding = self.mixture is None or self.slot_positions is None
        embedded = self.gpt.embed(tokens) if needs_embedding else None
        inputs = self.slot_features(tokens, embedded)
        sa = self.slot_attention
        # the Gaussian start's draw, kept so that masks="last_iteration" can rebuild the same start (the same
        # draw slot attention would make itself, so the random stream is unchanged)
        noise = (torch.randn(tokens.shape[0], sa.num_slots, sa.slot_dim, device=sa.mu.device, dtype=sa.mu.dtype)
                 if sa.init == "gaussian" else None)
        slots, attn, info = sa(inputs, noise=noise)
        out = {"dvae": dvae, "tokens": tokens, "slots": slots, "attn": attn, "info": info,
               "masks": self.masks(inputs, slots, noise)}
        if self.mixture is not None:
            out["logits"], out["decoder_masks"] = self.mixture(slots)
        else:
            out["logits"] = self.gpt(tokens, self.slot_proj(slots), embedded=embedded)
        return out

    def masks(self, inputs: torch.Tensor, slots: torch.Tensor, noise: torch.Tensor | None) -> torch.Tensor:
        """``[B,K,T]``: each token's share per slot, from the final ``slots`` or (``masks="last_iteration"``)
        from the slots one update earlier, rebuilt from the start that ``noise`` drew. No gradient."""
        with torch.no_grad():
            if self.mask_source == "last_iteration":
                start = self.slot_attention.initial_slots(inputs.shape[0], noise)
                slots = self.slot_attention.iterate(inputs, start, self.iters - 1)
            return self.slot_attention.masks(inputs, slots.detach())

    def slot_features(self, tokens: torch.Tensor, embedded: torch.Tensor | None = None) -> torch.Tensor:
        """``[B,T,D]``: what slot attention reads for ``tokens [B,T]``: their embeddings (``embedded``:
        ``gpt.embed(tokens)`` if already computed) through SLATE's LayerNorm + MLP."""
        if self.slot_positions is None:
            x = (self.gpt.embed(tokens) if embedded is None else embedded)[:, 1:]
        else:
            grid = self.gpt.dictionary(tokens).unflatten(1, (self.grid, self.grid))
            x = self.slot_positions(grid).flatten(1, 2)
        if self.token_convs is not None:
            grid = x.unflatten(1, (self.grid, self.grid)).permute(0, 3, 1, 2)
            x = self.token_convs(grid).flatten(2).transpose(1, 2)
        return self.slot_input(x)

    def token_logits(self, tokens: torch.Tensor, slots: torch.Tensor) -> torch.Tensor:
        """Logits ``[B,T,V]`` of ``tokens [B,T]`` given ``slots`` (teacher forcing for the image-GPT)."""
        if self.mixture is not None:
            return self.mixture(slots)[0]
        return self.gpt(tokens, self.slot_proj(slots))

    @torch.no_grad()
    def reconstruct(self, slots: torch.Tensor, use_cache: bool = True) -> torch.Tensor:
        """Image ``[B,3,H,W]`` from ``slots [B,K,S]``: tokens decoded greedily, then the dVAE decoder."""
        if self.mixture is not None:
            tokens = self.mixture.generate(slots)
        else:
            tokens = self.gpt.generate(self.slot_proj(slots), use_cache=use_cache)
        return self.dvae.decode_tokens(tokens.unflatten(1, (self.grid, self.grid)))


def slate_loss(model: Slate, out: dict[str, Any], image: torch.Tensor) -> tuple[torch.Tensor, dict[str, float]]:
    """SLATE's objective, both terms summed per image and averaged over the batch: the dVAE's pixel squared
    error plus the decoder's token cross-entropy. Advances the temperature schedule in training mode."""
    b = image.shape[0]
    mse = (out["dvae"]["recon"] - image).square().sum() / b
    ce = F.cross_entropy(out["logits"].flatten(0, 1), out["tokens"].flatten(), reduction="sum") / b
    if model.training:
        model.step += 1
    return mse + ce, {"dvae_mse": mse.item(), "ce_per_token": ce.item() / out["tokens"].shape[1],
                      "tau": model.tau(), "nfe": out["info"].nfe.float().mean().item()}
