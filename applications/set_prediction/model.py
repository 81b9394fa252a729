"""Set predictors: slot attention or DSPN on images (object properties), and a DSPN set autoencoder.

Each predicted object is one row of ``[B, K, P]`` laid out by :class:`Layout`: x, y (fractions of the image
side), then logits of each discrete attribute (shape, colour, size class), then a presence logit. The loss
matches predictions to targets with the Hungarian algorithm on the same per-pair loss it then minimises.
Shapes: B batch, K predicted objects (slots), M true objects (padded), P row width.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from deqkit.metrics import hungarian_match
from deqkit.nn import DSPN, CNNEncoder, SetEncoder, SlotAttention


@dataclass(frozen=True)
class Layout:
    """Where x/y, each attribute's logits and the presence logit sit in a predicted row."""

    classes: tuple[int, ...]  # number of classes of each discrete attribute (shape, colour, size)

    @property
    def width(self) -> int:
        return 2 + sum(self.classes) + 1

    def split(self, rows: torch.Tensor) -> tuple[torch.Tensor, list[torch.Tensor], torch.Tensor]:
        """``rows [..., P] -> (xy [..., 2], [logits [..., C_a] per attribute], presence logit [...])``."""
        xy, rest = rows[..., :2], rows[..., 2:]
        logits = list(rest[..., :-1].split(list(self.classes), dim=-1))
        return xy, logits, rest[..., -1]


class _FixedPointIters(nn.Module):
    """Runs ``iters`` solver iterations in training and ``test_iters`` (if set) in eval mode."""

    def _use_iters(self, fixed_point: nn.Module) -> None:
        fixed_point.max_iter = self.iters if self.training or self.test_iters is None else self.test_iters


class SlotPropertyPredictor(_FixedPointIters):
    """Image -> CNN encoder -> slot attention (K slots) -> an MLP per slot -> rows ``[B,K,P]``."""

    def __init__(self, layout: Layout, num_slots: int, slot_dim: int, channels: int, mlp_hidden: int, iters: int,
                 *, test_iters: int | None = None, encoder_layers: int = 4, encoder_kernel: int = 5,
                 encoder_downsample: int = 0, solver: str = "iteration", backward: str = "neumann",
                 tol: float | None = None, init: str = "gaussian"):
        super().__init__()
        self.iters, self.test_iters = iters, test_iters
        self.encoder = CNNEncoder(channels, encoder_layers, encoder_kernel, encoder_downsample)
        self.slot_attention = SlotAttention(num_slots, channels, slot_dim, mlp_hidden, iters, solver=solver,
                                            backward=backward, tol=tol, init=init)
        self.head = nn.Sequential(nn.Linear(slot_dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, layout.width))

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        self._use_iters(self.slot_attention.fixed_point)
        slots, attn, info = self.slot_attention(self.encoder(image))
        return {"rows": self.head(slots), "attn": attn, "info": info}


class DSPNPropertyPredictor(_FixedPointIters):
    """Image -> CNN encoder -> flattened feature map -> code z -> DSPN decodes the K rows ``[B,K,P]``.

    The set elements are the predicted rows themselves (as in DSPN on CLEVR); the inner encoder is a
    :class:`deqkit.nn.SetEncoder` of its own.
    """

    def __init__(self, layout: Layout, image_size: int, num_slots: int, channels: int, latent: int, hidden: int,
                 iters: int, *, test_iters: int | None = None, encoder_layers: int = 4, encoder_kernel: int = 5,
                 encoder_downsample: int = 0, inner_lr: float = 1.0, inner_reg: float = 0.1, inner_momentum: float = 0.0,
                 pool: str = "fspool", solver: str = "iteration", backward: str = "neumann", tol: float | None = None,
                 inner_objective: str = "per_sample"):
        super().__init__()
        self.iters, self.test_iters = iters, test_iters
        self.encoder = CNNEncoder(channels, encoder_layers, encoder_kernel, encoder_downsample)
        side = image_size // 2**encoder_downsample
        self.to_code = nn.Sequential(nn.Linear(side * side * channels, latent), nn.ReLU(), nn.Linear(latent, latent))
        set_encoder = SetEncoder(layout.width, num_slots, hidden, latent, pool=pool)
        self.dspn = DSPN(set_encoder, num_slots, layout.width, iters=iters, lr=inner_lr, reg=inner_reg,
                         momentum=inner_momentum, solver=solver, backward=backward, tol=tol,
                         inner_objective=inner_objective)

    def forward(self, image: torch.Tensor) -> dict[str, Any]:
        self._use_iters(self.dspn.fixed_point)
        z = self.to_code(self.encoder(image).flatten(1))
        rows, info = self.dspn(z)
        return {"rows": rows, "info": info}


class SetAutoencoder(_FixedPointIters):
    """Random set autoencoding: ``z = enc_in(X)``, then DSPN decodes Y with ``enc(Y) ≈ z``. iDSPN's code
    uses two FSPool encoders (one for the input, one inside the inner objective); ``share_encoder=True``
    uses one for both as DSPN's autoencoders do, which makes Y = X a minimiser of the inner objective."""

    def __init__(self, set_size: int, dim: int, hidden: int, latent: int, iters: int, *, test_iters: int | None = None,
                 inner_lr: float = 1.0, inner_reg: float = 0.1, inner_momentum: float = 0.0, pool: str = "fspool",
                 solver: str = "iteration", backward: str = "neumann", tol: float | None = None,
                 share_encoder: bool = False, inner_objective: str = "per_sample"):
        super().__init__()
        self.iters, self.test_iters = iters, test_iters
        self.encoder = SetEncoder(dim, set_size, hidden, latent, pool=pool)
        inner = self.encoder if share_encoder else SetEncoder(dim, set_size, hidden, latent, pool=pool)
        self.dspn = DSPN(inner, set_size, dim, iters=iters,
                         lr=inner_lr, reg=inner_reg, momentum=inner_momentum, solver=solver, backward=backward, tol=tol,
                         inner_objective=inner_objective)

    def forward(self, x: torch.Tensor) -> dict[str, Any]:
        self._use_iters(self.dspn.fixed_point)
        y, info = self.dspn(self.encoder(x))
        return {"set": y, "info": info}


# ------------------------------------------------------------------------------------------------ losses


def pair_losses(rows: torch.Tensor, layout: Layout, classes: torch.Tensor, xy: torch.Tensor, present: torch.Tensor,
                coord_weight: float) -> torch.Tensor:
    """Loss of predicting target j with row i, ``[B,K,M]``: for a real object the cross-entropies of its
    classes, ``coord_weight`` · smooth-L1 of x, y (in image-side fractions) and the presence BCE toward 1;
    for a padding target only the presence BCE toward 0."""
    p_xy, logits, p_logit = layout.split(rows)
    cost = torch.zeros(rows.shape[0], rows.shape[1], classes.shape[1], dtype=rows.dtype, device=rows.device)
    for a, lg in enumerate(logits):
        logp = lg.log_softmax(-1)  # [B,K,C]
        target = classes[..., a].clamp_min(0)  # [B,M]; padding rows are masked below
        cost = cost - logp.gather(2, target[:, None, :].expand(-1, rows.shape[1], -1))
    k, m = rows.shape[1], xy.shape[1]
    cost = cost + coord_weight * F.smooth_l1_loss(p_xy[:, :, None, :].expand(-1, -1, m, -1),
                                                  xy[:, None, :, :].expand(-1, k, -1, -1), reduction="none",
                                                  beta=0.05).sum(-1)
    real = present[:, None, :]
    cost = torch.where(real, cost + F.softplus(-p_logit)[:, :, None], F.softplus(p_logit)[:, :, None])
    return cost


def matched_loss(cost: torch.Tensor) -> torch.Tensor:
    """Per sample ``[B]``: the mean over the K predictions of the Hungarian-matched pair loss (K >= M targets
    padded to K by the caller)."""
    rows, cols = hungarian_match(cost)
    return cost[torch.arange(cost.shape[0], device=cost.device)[:, None], rows, cols].mean(1)


def set_matched_smooth_l1(pred: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
    """Per sample ``[B]``: smooth-L1 between the sets, matched by the Hungarian algorithm, mean over elements
    and dimensions (iDSPN's random-set loss)."""
    n = pred.shape[1]
    cost = F.smooth_l1_loss(pred[:, :, None, :].expand(-1, -1, n, -1), target[:, None, :, :].expand(-1, n, -1, -1),
                            reduction="none").mean(-1)  # [B,N,N]
    return matched_loss(cost)
