"""Slot attention (Locatello et al., NeurIPS 2020) as a fixed point, and the object-discovery autoencoder.

The slot update is a ``deqkit.FixedPoint`` step, so the gradient is a choice: ``unrolled`` is vanilla
slot attention (backpropagate through every iteration), ``neumann`` is implicit slot attention (Chang et
al., NeurIPS 2022: iterate without a graph, then one differentiable step from the detached slots).

Shapes: B batch, N inputs (pixels), D input width, K slots, S slot width, H x W image.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import torch
import torch.nn.functional as F
from torch import nn

from deqkit import FixedPoint, SolveInfo
from deqkit.train import ConfigError  # a usage error: one line, exit status 2 from the CLI


class SlotAttentionStep(nn.Module):
    """One slot update ``slots <- GRU(updates, slots) + MLP(LN(slots))`` for fixed keys and values.

    ``forward(slots [B,K,S], k [B,N,S], v [B,N,S]) -> slots [B,K,S]``. The attention is a softmax over the
    slots (slots compete for each input) followed by a weighted mean over the inputs.
    """

    def __init__(self, slot_dim: int, mlp_hidden: int, eps: float = 1e-8):
        super().__init__()
        self.eps, self.scale = eps, slot_dim**-0.5
        self.norm_slots = nn.LayerNorm(slot_dim)
        self.to_q = nn.Linear(slot_dim, slot_dim, bias=False)
        self.gru = nn.GRUCell(slot_dim, slot_dim)
        self.norm_mlp = nn.LayerNorm(slot_dim)
        self.mlp = nn.Sequential(nn.Linear(slot_dim, mlp_hidden), nn.ReLU(), nn.Linear(mlp_hidden, slot_dim))

    def attention(self, slots: torch.Tensor, k: torch.Tensor) -> torch.Tensor:
        """Attention weights ``[B,K,N]``: softmax over slots, then normalised over inputs (rows sum to 1)."""
        q = self.to_q(self.norm_slots(slots))
        logits = torch.einsum("bkd,bnd->bkn", q, k) * self.scale
        attn = logits.softmax(dim=1) + self.eps
        return attn / attn.sum(dim=-1, keepdim=True)

    def forward(self, slots: torch.Tensor, k: torch.Tensor, v: torch.Tensor) -> torch.Tensor:
        b, n_slots, s = slots.shape
        updates = torch.einsum("bkn,bnd->bkd", self.attention(slots, k), v)
        slots = self.gru(updates.reshape(-1, s), slots.reshape(-1, s)).reshape(b, n_slots, s)
        return slots + self.mlp(self.norm_mlp(slots))


SlotInit = Literal["gaussian", "learned"]


class SlotAttention(nn.Module):
    """Slot attention over a set of inputs: ``forward(inputs [B,N,D]) -> (slots [B,K,S], attn [B,K,N], info)``.

    Slots start from ``init`` (or from ``slots`` if given) and are refined by ``iters`` solver iterations
    of :class:`SlotAttentionStep`; ``attn`` is the attention of the returned slots over the inputs (at a
    fixed point, the attention that produced them).

    - ``init="gaussian"`` (Locatello et al.): samples ``mu + sigma * eps`` of a learned Gaussian, shared by
      all slots. With an implicit ``backward`` the start is detached, so ``mu`` and ``sigma`` get gradients
      only from ``unrolled``.
    - ``init="learned"``: K learned starting slots (queries), the same for every image, so slots differ
      from the first step on. With an implicit ``backward`` they get the output slots' gradient unchanged
      (straight-through: ``slots + q - q.detach()``, in the spirit of Jia et al., ICLR 2023, "BO-QSA",
      which passes it through the last step instead); with ``unrolled`` their exact gradient.
    """

    def __init__(self, num_slots: int, input_dim: int, slot_dim: int = 64, mlp_hidden: int = 128,
                 iters: int = 3, *, solver: str = "iteration", backward: str = "neumann",
                 tol: float | None = None, init: SlotInit = "gaussian"):
        super().__init__()
        if init not in ("gaussian", "learned"):
            raise ConfigError(f"SlotAttention: unknown init {init!r}; use 'gaussian' or 'learned'")
        self.num_slots, self.slot_dim, self.init = num_slots, slot_dim, init
        self.norm_inputs = nn.LayerNorm(input_dim)
        self.to_k = nn.Linear(input_dim, slot_dim, bias=False)
        self.to_v = nn.Linear(input_dim, slot_dim, bias=False)
        if init == "gaussian":
            self.mu = nn.Parameter(torch.randn(1, 1, slot_dim))
            self.log_sigma = nn.Parameter(torch.empty(1, 1, slot_dim))
            nn.init.xavier_uniform_(self.log_sigma)
        else:
            self.queries = nn.Parameter(torch.randn(1, num_slots, slot_dim) * slot_dim**-0.5)
        self.step = SlotAttentionStep(slot_dim, mlp_hidden)
        self.fixed_point = FixedPoint(self.step, solver=solver, backward=backward, tol=tol, max_iter=iters)

    def initial_slots(self, batch: int) -> torch.Tensor:
        """``[B,K,S]``: samples of the learned Gaussian, or the learned queries."""
        if self.init == "learned":
            return self.queries.expand(batch, -1, -1)
        noise = torch.randn(batch, self.num_slots, self.slot_dim, device=self.mu.device, dtype=self.mu.dtype)
        return self.mu + self.log_sigma.exp() * noise

    def forward(self, inputs: torch.Tensor, slots: torch.Tensor | None = None
                ) -> tuple[torch.Tensor, torch.Tensor, SolveInfo]:
        inputs = self.norm_inputs(inputs)
        k, v = self.to_k(inputs), self.to_v(inputs)
        from_queries = slots is None and self.init == "learned"
        slots0 = self.initial_slots(inputs.shape[0]) if slots is None else slots
        slots, info = self.fixed_point(slots0, k, v)
        if from_queries and not self.fixed_point.backward.unrolled:
            slots = slots + (slots0 - slots0.detach())  # zero in value; identity gradient to the queries
        return slots, self.step.attention(slots, k), info


def position_grid(height: int, width: int, device: Any = None) -> torch.Tensor:
    """``[H,W,4]`` coordinates ``(y, x, 1-y, 1-x)`` in [0, 1], the input of the soft position embedding."""
    ys = torch.linspace(0.0, 1.0, height, device=device)
    xs = torch.linspace(0.0, 1.0, width, device=device)
    grid = torch.stack(torch.meshgrid(ys, xs, indexing="ij"), dim=-1)
    return torch.cat([grid, 1.0 - grid], dim=-1)


def slot_frames(attn: torch.Tensor, height: int, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Where each slot looks: centre ``[B,K,2]`` and per-axis spread ``[B,K,2]`` (``(y, x)`` in [0, 1]) of
    its attention ``[B,K,N]`` (rows summing to 1) over an ``height x width`` grid of inputs."""
    pos = position_grid(height, width, attn.device)[..., :2].reshape(-1, 2).to(attn.dtype)  # [N,2]
    centre = attn @ pos
    variance = attn @ pos.square() - centre.square()
    return centre, variance.clamp_min(1e-4).sqrt()  # >= 0.01: a finite gradient and a bounded 1/spread


class SoftPositionEmbed(nn.Module):
    """Adds a learned linear map of the pixel coordinates to a channels-last feature map ``[B,H,W,C]``."""

    def __init__(self, channels: int):
        super().__init__()
        self.proj = nn.Linear(4, channels)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.proj(position_grid(x.shape[1], x.shape[2], x.device))


class Encoder(nn.Module):
    """CNN + position embedding + per-pixel MLP: image ``[B,3,H,W]`` -> features ``[B,N,C]``.

    ``downsample`` of the convolutions have stride 2 (N = H W / 4^downsample): cheaper on a CPU.
    """

    def __init__(self, channels: int, layers: int = 4, kernel: int = 5, downsample: int = 0):
        super().__init__()
        convs, c_in = [], 3
        for i in range(layers):
            stride = 2 if i < downsample else 1
            convs += [nn.Conv2d(c_in, channels, kernel, stride=stride, padding=kernel // 2), nn.ReLU()]
            c_in = channels
        self.cnn = nn.Sequential(*convs)
        self.pos = SoftPositionEmbed(channels)
        self.norm = nn.LayerNorm(channels)
        self.mlp = nn.Sequential(nn.Linear(channels, channels), nn.ReLU(), nn.Linear(channels, channels))

    def forward(self, image: torch.Tensor) -> torch.Tensor:
        x = self.pos(self.cnn(image).permute(0, 2, 3, 1))  # [B,h,w,C]
        return self.mlp(self.norm(x.flatten(1, 2)))


def upsampling_steps(size: int, grid: int) -> int:
    """How many stride-2 upsamplings take a ``grid x grid`` broadcast to ``size x size`` (a ConfigError
    unless ``size`` is ``grid`` times a power of 2)."""
    ups = math.log2(size / grid) if grid >= 1 else -1.0
    if ups != int(ups) or ups < 0:
        raise ConfigError(f"image size {size} must be decoder_grid={grid} times a power of 2")
    return int(ups)


class SpatialBroadcastDecoder(nn.Module):
    """Each slot ``[S]`` is tiled on a ``grid x grid`` map, given positions, and upsampled by stride-2
    transposed convolutions to ``size x size``, then ``full_res_convs`` 3x3 convolutions and a 3x3 output
    layer give RGB ``[3]`` and an alpha logit per pixel. With ``full_res_convs=0`` the last transposed
    convolution is the output layer (about 3x cheaper at 32 px on a CPU)."""

    def __init__(self, slot_dim: int, channels: int, size: int, grid: int = 8, full_res_convs: int = 1):
        super().__init__()
        ups = upsampling_steps(size, grid)
        self.grid = grid
        self.pos = SoftPositionEmbed(slot_dim)
        layers: list[nn.Module] = []
        c_in = slot_dim
        for i in range(ups):
            # with no full-resolution convolutions the last upsampling writes the output directly (cheap)
            is_output = i == ups - 1 and full_res_convs == 0
            layers.append(nn.ConvTranspose2d(c_in, 4 if is_output else channels, 5, stride=2, padding=2,
                                             output_padding=1))
            layers += [] if is_output else [nn.ReLU()]
            c_in = channels
        for _ in range(full_res_convs):
            layers += [nn.Conv2d(c_in, channels, 3, padding=1), nn.ReLU()]
            c_in = channels
        if ups == 0 or full_res_convs > 0:
            layers.append(nn.Conv2d(c_in, 4, 3, padding=1))
        self.net = nn.Sequential(*layers)

    def forward(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """slots ``[B,K,S]`` -> (rgb ``[B,K,3,H,W]``, alpha logits ``[B,K,1,H,W]``)."""
        b, k, s = slots.shape
        x = slots.reshape(b * k, 1, 1, s).expand(-1, self.grid, self.grid, -1)
        x = self.net(self.pos(x).permute(0, 3, 1, 2))
        x = x.reshape(b, k, 4, *x.shape[-2:])
        return x[:, :, :3], x[:, :, 3:]


class MLPBroadcastDecoder(nn.Module):
    """Each slot ``[S]`` is broadcast on a ``grid x grid`` map, a per-position MLP of (slot, position) maps
    it to ``channels`` features (two layers, i.e. 1x1 convolutions), and 4x4 stride-2 transposed
    convolutions upsample to ``size x size``, the last one writing RGB ``[3]`` and an alpha logit.

    The first layer of ``[slot, position] -> channels`` is computed as ``W_s slot + W_p position`` (one
    product per slot plus one per position, not per (slot, position) pair). At 32 px on a CPU it is
    ~5x cheaper than :class:`SpatialBroadcastDecoder` (timings in docs/slot_attention.md).

    ``relative=True``: positions are given in each slot's own frame, ``(p - centre) / spread`` of its
    attention (:func:`slot_frames`), as in the decoder of Invariant Slot Attention (Biza et al., ICML 2023),
    so a shape is learned once wherever it appears.
    """

    def __init__(self, slot_dim: int, channels: int, size: int, grid: int, relative: bool = False):
        super().__init__()
        ups = upsampling_steps(size, grid)
        self.grid = grid
        self.relative = relative
        self.slot_in = nn.Linear(slot_dim, channels)
        self.pos_in = nn.Linear(2 if relative else 4, channels, bias=False)
        self.hidden = nn.Linear(channels, channels)
        layers: list[nn.Module] = []
        for i in range(ups):
            last = i == ups - 1
            layers += [nn.ConvTranspose2d(channels, 4 if last else channels, 4, stride=2, padding=1)]
            layers += [] if last else [nn.ReLU()]
        self.out = nn.Sequential(*layers) if ups else nn.Conv2d(channels, 4, 1)

    def forward(self, slots: torch.Tensor, frames: tuple[torch.Tensor, torch.Tensor] | None = None
                ) -> tuple[torch.Tensor, torch.Tensor]:
        """slots ``[B,K,S]`` (and, if ``relative``, ``slot_frames``) -> (rgb ``[B,K,3,H,W]``, alpha logits
        ``[B,K,1,H,W]``)."""
        b, k, _ = slots.shape
        x = self.slot_in(slots)[:, :, None, None, :]  # [B,K,1,1,C]
        if self.relative:
            if frames is None:
                raise ValueError("MLPBroadcastDecoder(relative=True) needs the slots' frames (slot_frames)")
            centre, spread = frames
            axis = torch.linspace(0.0, 1.0, self.grid, device=slots.device, dtype=slots.dtype)
            rel = (axis - centre[..., None]) / spread[..., None]  # [B,K,2,g]: (y, x) in the slot's frame
            w_y, w_x = self.pos_in.weight.T  # W_p rel = rel_y w_y + rel_x w_x: no [B,K,g,g,2] tensor
            x = x + rel[:, :, 0, :, None, None] * w_y + rel[:, :, 1, None, :, None] * w_x
        else:
            x = x + self.pos_in(position_grid(self.grid, self.grid, slots.device).to(slots.dtype))
        x = F.relu(x)  # [B,K,g,g,C]
        x = F.relu(self.hidden(x)).flatten(0, 1).permute(0, 3, 1, 2)  # [BK,C,g,g]
        x = self.out(x)
        x = x.reshape(b, k, 4, *x.shape[-2:])
        return x[:, :, :3], x[:, :, 3:]


class SlotAutoencoder(nn.Module):
    """Encoder -> slot attention -> per-slot broadcast decoder, mixed by a softmax over slots.

    ``forward(image [B,3,H,W])`` returns a dict: ``recon [B,3,H,W]``, ``masks [B,K,H,W]`` (sum to 1 over
    K), ``rgb [B,K,3,H,W]``, ``slots [B,K,S]``, ``attn [B,K,N]`` and the solver ``info``.
    """

    def __init__(self, image_size: int, num_slots: int = 5, slot_dim: int = 64, channels: int = 64,
                 mlp_hidden: int = 128, iters: int = 3, *, encoder_layers: int = 4, encoder_kernel: int = 5,
                 encoder_downsample: int = 0, decoder_channels: int | None = None, decoder_grid: int = 8,
                 decoder_full_res_convs: int = 1, decoder: Literal["conv", "mlp"] = "conv",
                 decoder_positions: Literal["absolute", "relative"] = "absolute",
                 solver: str = "iteration", backward: str = "neumann", tol: float | None = None,
                 init: SlotInit = "gaussian"):
        super().__init__()
        self.encoder = Encoder(channels, encoder_layers, encoder_kernel, encoder_downsample)
        self.slot_attention = SlotAttention(num_slots, channels, slot_dim, mlp_hidden, iters,
                                            solver=solver, backward=backward, tol=tol, init=init)
        width = decoder_channels or channels
        if decoder_positions not in ("absolute", "relative") or (decoder_positions == "relative" and decoder != "mlp"):
            raise ConfigError(f"SlotAutoencoder: decoder_positions={decoder_positions!r} is invalid; use 'absolute', "
                             "or 'relative' with decoder='mlp'")
        self.relative = decoder_positions == "relative"
        if decoder == "conv":
            self.decoder = SpatialBroadcastDecoder(slot_dim, width, image_size, decoder_grid, decoder_full_res_convs)
        elif decoder == "mlp":
            self.decoder = MLPBroadcastDecoder(slot_dim, width, image_size, decoder_grid, self.relative)
        else:
            raise ConfigError(f"SlotAutoencoder: unknown decoder {decoder!r}; use 'conv' or 'mlp'")

    def forward(self, image: torch.Tensor, slots: torch.Tensor | None = None) -> dict[str, Any]:
        features = self.encoder(image)
        slots, attn, info = self.slot_attention(features, slots)
        if self.relative:
            side = math.isqrt(features.shape[1])  # the encoder's square grid of inputs
            rgb, alpha = self.decoder(slots, slot_frames(attn, side, side))
        else:
            rgb, alpha = self.decoder(slots)
        masks = alpha.softmax(dim=1)  # [B,K,1,H,W]: slots compete for each pixel
        recon = (masks * rgb).sum(dim=1)
        return {"recon": recon, "masks": masks.squeeze(2), "rgb": rgb, "slots": slots, "attn": attn,
                "info": info}


def reconstruction_loss(out: dict[str, Any], image: torch.Tensor) -> torch.Tensor:
    """Mean squared error of the mixture reconstruction (the paper's only training signal)."""
    return F.mse_loss(out["recon"], image)
