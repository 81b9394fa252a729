"""An image-GPT decoder: causal self-attention over a token sequence plus cross-attention to a set of
vectors (slots), predicting the next token; with a key/value cache for autoregressive generation.

This is the decoder of SLATE (Singh, Deng & Ahn, ICLR 2022): tokens of a discrete VAE are predicted one
by one, each conditioned on the tokens before it and on the slots. Shapes: B batch, T tokens, D model
width, M memory vectors (slots), V vocabulary.
"""

from __future__ import annotations

from typing import Literal

import torch
import torch.nn.functional as F
from torch import nn

Cache = list[dict[str, torch.Tensor]]  # one dict per block: self-attention keys/values so far, memory's


class Attention(nn.Module):
    """Multi-head attention ``x [B,T,D]`` -> ``[B,T,D]`` over ``source [B,S,D]`` (scaled dot product)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0):
        super().__init__()
        if d_model % num_heads:
            raise ValueError(f"d_model={d_model} must be divisible by num_heads={num_heads}")
        self.heads, self.dropout = num_heads, dropout
        self.q = nn.Linear(d_model, d_model, bias=False)
        self.kv = nn.Linear(d_model, 2 * d_model, bias=False)
        self.out = nn.Linear(d_model, d_model, bias=False)

    def split(self, x: torch.Tensor) -> torch.Tensor:
        """``[B,T,D]`` -> ``[B,heads,T,D/heads]``."""
        return x.unflatten(-1, (self.heads, -1)).transpose(1, 2)

    def keys_values(self, source: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        k, v = self.kv(source).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def forward(self, x: torch.Tensor, k: torch.Tensor, v: torch.Tensor, causal: bool = False) -> torch.Tensor:
        drop = self.dropout if self.training else 0.0
        y = F.scaled_dot_product_attention(self.split(self.q(x)), k, v, dropout_p=drop, is_causal=causal)
        return self.out(y.transpose(1, 2).flatten(2))


Activation = Literal["gelu", "relu"]
ACTIVATIONS: dict[str, type[nn.Module]] = {"gelu": nn.GELU, "relu": nn.ReLU}


class DecoderBlock(nn.Module):
    """Pre-norm block: causal self-attention, cross-attention to the memory, MLP; each residual.
    ``activation`` is the MLP's nonlinearity (``"gelu"``; SLATE's code uses ``"relu"``)."""

    def __init__(self, d_model: int, num_heads: int, dropout: float = 0.0, activation: Activation = "gelu"):
        super().__init__()
        if activation not in ACTIVATIONS:
            raise ValueError(f"unknown activation {activation!r}; use one of {', '.join(ACTIVATIONS)}")
        self.norm_self, self.norm_cross, self.norm_mlp = (nn.LayerNorm(d_model) for _ in range(3))
        self.self_attn = Attention(d_model, num_heads, dropout)
        self.cross_attn = Attention(d_model, num_heads, dropout)
        self.mlp = nn.Sequential(nn.Linear(d_model, 4 * d_model), ACTIVATIONS[activation](),
                                 nn.Linear(4 * d_model, d_model), nn.Dropout(dropout))

    def forward(self, x: torch.Tensor, memory: torch.Tensor, cache: dict[str, torch.Tensor] | None = None
                ) -> torch.Tensor:
        """``x [B,T,D]``. With ``cache`` (a dict, filled on the first call), ``x`` holds only the new
        positions: they attend to every cached one and the cache grows by them."""
        h = self.norm_self(x)
        k, v = self.self_attn.keys_values(h)
        if cache is None:
            x = x + self.self_attn(h, k, v, causal=True)
            mk, mv = self.cross_attn.keys_values(memory)
        else:
            if "k" in cache:
                k, v = torch.cat([cache["k"], k], dim=2), torch.cat([cache["v"], v], dim=2)
            if x.shape[1] > 1 and "k" in cache:
                raise ValueError("a cached decoder step takes one new position at a time")
            cache["k"], cache["v"] = k, v
            x = x + self.self_attn(h, k, v, causal=x.shape[1] > 1)  # one new position sees all cached
            if "mk" not in cache:  # the memory's keys and values are computed once per sequence
                cache["mk"], cache["mv"] = self.cross_attn.keys_values(memory)
            mk, mv = cache["mk"], cache["mv"]
        x = x + self.cross_attn(self.norm_cross(x), mk, mv)
        return x + self.mlp(self.norm_mlp(x))


class TransformerDecoder(nn.Module):
    """``num_blocks`` decoder blocks and a final LayerNorm: ``(x [B,T,D], memory [B,M,D]) -> [B,T,D]``."""

    def __init__(self, d_model: int, num_heads: int, num_blocks: int, dropout: float = 0.0,
                 activation: Activation = "gelu"):
        super().__init__()
        self.blocks = nn.ModuleList(DecoderBlock(d_model, num_heads, dropout, activation) for _ in range(num_blocks))
        self.norm = nn.LayerNorm(d_model)

    def forward(self, x: torch.Tensor, memory: torch.Tensor, cache: Cache | None = None) -> torch.Tensor:
        for i, block in enumerate(self.blocks):
            x = block(x, memory, None if cache is None else cache[i])
        return self.norm(x)

    def new_cache(self) -> Cache:
        return [{} for _ in self.blocks]


class ImageGPT(nn.Module):
    """Predicts a grid of ``num_tokens`` discrete tokens (raster order) from a memory of vectors.

    ``embed(tokens [B,T]) -> [B,1+T,D]``: a BOS vector then the tokens' dictionary vectors, plus learned
    positions (SLATE feeds ``embed(tokens)[:, 1:]`` to slot attention too). ``forward(tokens, memory)``
    gives next-token logits ``[B,T,V]`` with teacher forcing; ``generate(memory)`` decodes greedily.

    ``context_dropout`` p hides each earlier token from the decoder with probability p in training (it
    sees a learned MASK vector at that position instead), so that it has to read the memory rather than
    copy its neighbours. ``p = 1`` hides every token in training and evaluation: the decoder sees only
    positions and predicts all tokens at once from the memory (a parallel, non-autoregressive decoder).
    """

    def __init__(self, vocab_size: int, num_tokens: int, d_model: int, num_heads: int, num_blocks: int,
                 dropout: float = 0.0, context_dropout: float = 0.0, activation: Activation = "gelu"):
        super().__init__()
        if not 0.0 <= context_dropout <= 1.0:
            raise ValueError(f"context_dropout must be in [0, 1], got {context_dropout}")
        self.vocab_size, self.num_tokens, self.context_dropout = vocab_size, num_tokens, context_dropout
        self.mask_id = vocab_size + 1
        # index vocab_size is BOS, vocab_size + 1 MASK (only when tokens can be hidden)
        self.dictionary = nn.Embedding(vocab_size + (2 if context_dropout > 0 else 1), d_model)
        # unit scale like the dictionary's vectors (SLATE's code: trunc_normal_ with std 1), so that slot
        # attention, which reads these embeddings, can group by position from the start
        self.positions = nn.Parameter(nn.init.trunc_normal_(torch.empty(1, 1 + num_tokens, d_model)))
        self.drop = nn.Dropout(dropout)
        self.decoder = TransformerDecoder(d_model, num_heads, num_blocks, dropout, activation)
        self.head = nn.Linear(d_model, vocab_size, bias=False)

    def embed(self, tokens: torch.Tensor) -> torch.Tensor:
        """``tokens [B,T]`` (T <= num_tokens) -> ``[B,1+T,D]``: BOS then the tokens, with positions."""
        bos = tokens.new_full((tokens.shape[0], 1), self.vocab_size)
        x = self.dictionary(torch.cat([bos, tokens], dim=1))
        return self.drop(x + self.positions[:, : x.shape[1]])

    def forward(self, tokens: torch.Tensor, memory: torch.Tensor, embedded: torch.Tensor | None = None
                ) -> torch.Tensor:
        """Logits ``[B,T,V]`` of token ``t`` given tokens ``< t`` and ``memory [B,M,D]`` (``embedded``:
        ``embed(tokens)`` if already computed)."""
        hide = self.hidden_context(tokens)
        if hide is not None:
            x = self.embed(tokens.masked_fill(hide, self.mask_id))
        else:
            x = self.embed(tokens) if embedded is None else embedded
        return self.head(self.decoder(x[:, :-1], memory))

    @property
    def parallel(self) -> bool:
        """Whether every token is hidden from the decoder (``context_dropout == 1``)."""
        return self.context_dropout >= 1.0

    def hidden_context(self, tokens: torch.Tensor) -> torch.Tensor | None:
        """Boolean ``[B,T]``: the tokens the decoder does not see this call (None: it sees all)."""
        if self.parallel:
            return torch.ones_like(tokens, dtype=torch.bool)
        if self.training and self.context_dropout > 0:
            return torch.rand(tokens.shape, device=tokens.device) < self.context_dropout
        return None

    @torch.no_grad()
    def generate(self, memory: torch.Tensor, use_cache: bool = True) -> torch.Tensor:
        """Greedy (argmax) decoding of all ``num_tokens`` tokens ``[B,T]`` from ``memory [B,M,D]``.

        With the cache each step runs the new position only (keys/values of earlier positions and of the
        memory are kept), so the work grows linearly in T instead of quadratically."""
        b = memory.shape[0]
        if self.parallel:  # nothing to feed back: one pass predicts every token
            hidden = memory.new_full((b, self.num_tokens), self.mask_id, dtype=torch.long)
            return self.head(self.decoder(self.embed(hidden)[:, :-1], memory)).argmax(-1)
        tokens = memory.new_zeros(b, 0, dtype=torch.long)
        cache = self.decoder.new_cache() if use_cache else None
        for t in range(self.num_tokens):
            if use_cache:
                prev = self.vocab_size if t == 0 else tokens[:, -1]
                x = self.dictionary(torch.as_tensor(prev, device=memory.device).expand(b))[:, None]
                x = x + self.positions[:, t: t + 1]
                h = self.decoder(x, memory, cache)[:, -1]
            else:
                h = self.decoder(self.embed(tokens), memory)[:, -1]
            tokens = torch.cat([tokens, self.head(h).argmax(-1, keepdim=True)], dim=1)
        return tokens
