"""Which slot a decoder's output depends on, from its Jacobian (Brady et al. 2023, 2024).

``slot_jacobian_norms`` measures, for every output pixel, how strongly it changes with each slot's latent:
the norm of ``d x_hat[:, pixel] / d z_k`` over colour channels and the slot's latent dimensions. A decoder
that draws each object from one slot has one large entry per pixel; one that mixes slots everywhere does
not. From these norms: :func:`jacobian_ari` (the argmax over slots as a segmentation, scored by FG-ARI:
the J-ARI) and :func:`jacobian_interaction_score` (JIS: how concentrated each pixel's dependence is).

The Jacobian is computed in forward mode, one Jacobian-vector product per latent direction (``K * S``
of them), batched with ``torch.func.vmap``: the cost is that of ``K * S`` decoder passes over the batch,
far fewer than the ``C * H * W`` reverse-mode passes a row-by-row Jacobian would need.
"""

from __future__ import annotations

from typing import Callable

import torch
from torch.func import jvp, vmap

from deqkit.metrics.segmentation import fg_ari


def slot_jacobian_norms(decode: Callable[[torch.Tensor], torch.Tensor], slots: torch.Tensor, *,
                        chunk_size: int | None = None) -> torch.Tensor:
    """Per slot and output location, ``|| d decode(slots)[b, :, p] / d slots[b, k, :] ||_F``.

    Args:
        decode: ``[B,K,S] -> [B,C,*spatial]``; each image must depend on its own slots only (no batch
            statistics), and it must be deterministic (evaluation mode).
        slots: the latents ``[B,K,S]`` at which to differentiate.
        chunk_size: at most this many latent directions are pushed through ``decode`` at once (memory);
            ``None``: all ``K * S``.

    Returns:
        ``[B,K,*spatial]`` non-negative norms (float32).
    """
    b, k, s = slots.shape
    directions = torch.eye(k * s, dtype=slots.dtype, device=slots.device).reshape(k * s, 1, k, s)

    def column(direction: torch.Tensor) -> torch.Tensor:  # d decode / d (slot k, dim s) for every image
        return jvp(decode, (slots,), (direction.expand(b, k, s),))[1]

    columns = vmap(column, chunk_size=chunk_size)(directions)  # [K*S,B,C,*spatial]
    spatial = columns.shape[3:]
    squared = columns.float().square().sum(2).reshape(k, s, b, -1).sum(1)  # [K,B,P]
    return squared.sqrt().transpose(0, 1).reshape(b, k, *spatial)


def jacobian_masks(norms: torch.Tensor) -> torch.Tensor:
    """Norms ``[B,K,...]`` normalised to sum to 1 over slots at each location (uniform where all are 0)."""
    total = norms.sum(1, keepdim=True)
    uniform = torch.full_like(norms, 1.0 / norms.shape[1])
    return torch.where(total > 0, norms / total.clamp_min(torch.finfo(norms.dtype).tiny), uniform)


def jacobian_ari(true_masks: torch.Tensor, norms: torch.Tensor) -> torch.Tensor:
    """J-ARI: FG-ARI of the partition that gives each pixel to the slot it depends on most. ``Tensor[B]``."""
    return fg_ari(true_masks, jacobian_masks(norms))


def jacobian_interaction_score(norms: torch.Tensor, weights: torch.Tensor | None = None) -> torch.Tensor:
    """JIS: mean over locations of ``(m - 1/K) / (1 - 1/K)``, ``m`` the largest normalised slot share of a
    location: 1 when every pixel depends on a single slot, 0 when on all slots equally. ``Tensor[B]``.

    ``weights`` (``[B,...]``, e.g. a foreground mask) restricts or weights the mean over locations.
    """
    k = norms.shape[1]
    if k < 2:
        raise ValueError("jacobian_interaction_score needs at least 2 slots")
    score = (jacobian_masks(norms).amax(1) - 1.0 / k) / (1.0 - 1.0 / k)  # [B,...]
    if weights is None:
        return score.flatten(1).mean(1)
    w = weights.to(score.dtype).reshape(score.shape).flatten(1)
    return (score.flatten(1) * w).sum(1) / w.sum(1)
