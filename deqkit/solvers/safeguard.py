"""Per-sample safeguard for accelerated solvers: a step that made the residual grow is replaced.

An accelerated step (Anderson mixing, a Broyden quasi-Newton step) is only trusted while it helps. When the
residual ‖f(z) − z‖ of the new point is above ``growth`` times that of the last accepted point, the point is
rejected and the next iterate is a plain step from the accepted point instead; that plain step is then taken
unconditionally, so a sample can never stall.
"""

from __future__ import annotations

import torch

from deqkit.solvers.base import is_transformed


class Safeguard:
    """Remembers each sample's last accepted point (z, g = f(z) − z, ‖g‖)."""

    def __init__(self, growth: float):
        self.growth = growth
        self.z: torch.Tensor | None = None
        self.g: torch.Tensor | None = None
        self.res: torch.Tensor | None = None
        self.forced: torch.Tensor | None = None

    def check(self, z: torch.Tensor, g: torch.Tensor, abs_res: torch.Tensor) -> torch.Tensor:
        """Judge the new point; returns the rejected samples [B] and makes accepted ones the new reference."""
        if self.res is None:
            self.z, self.g, self.res = z, g, abs_res
            self.forced = torch.zeros_like(abs_res, dtype=torch.bool)
            return self.forced
        reject = ~(abs_res <= self.growth * self.res) & ~self.forced  # NaN residuals are rejected too
        keep = reject[:, None]
        self.z = torch.where(keep, self.z, z)
        self.g = torch.where(keep, self.g, g)
        self.res = torch.where(reject, self.res, abs_res)
        self.forced = reject
        return reject

    def select(self, keep: torch.Tensor) -> None:
        """Keep the samples at positions ``keep`` only."""
        if self.res is not None:
            self.z, self.g = self.z.index_select(0, keep), self.g.index_select(0, keep)
            self.res, self.forced = self.res.index_select(0, keep), self.forced.index_select(0, keep)

    def fallback(self, beta: float) -> torch.Tensor:
        """The plain (damped) step from each sample's accepted point."""
        return self.z + beta * self.g


def write_slot(buffer: torch.Tensor, slot: int, value: torch.Tensor) -> torch.Tensor:
    """Write ``value`` [B, D] into ``buffer[:, slot]``; copies first when autograd records the solve."""
    if is_transformed(value) and not is_transformed(buffer):
        # Under vmap a batched value cannot be written into an unbatched buffer: build a new one.
        mask = torch.arange(buffer.shape[1], device=buffer.device) == slot
        return torch.where(mask[None, :, None], value[:, None, :], buffer)
    if torch.is_grad_enabled() and (value.requires_grad or buffer.requires_grad):
        buffer = buffer.clone()
    buffer[:, slot] = value
    return buffer
