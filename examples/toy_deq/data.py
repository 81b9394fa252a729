"""Noisy 2-D spirals: ``arms`` interleaved arms, one class each; generated once from a seed."""

from __future__ import annotations

import math

import torch
from torch.utils.data import Dataset


class Spirals(Dataset):
    """``n`` points ``x: [2]`` with labels ``y`` in ``[0, arms)``; generated once from ``seed``
    by its own generator, so the data never touches the global RNG."""

    def __init__(self, n: int, arms: int = 3, noise: float = 0.1, seed: int = 0) -> None:
        g = torch.Generator().manual_seed(seed)
        self.y = torch.randint(arms, (n,), generator=g)
        r = torch.rand(n, generator=g)  # radius in (0, 1), the angle grows with it
        theta = 3.0 * math.pi * r + 2.0 * math.pi * self.y / arms
        points = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
        self.x = points + noise * r.unsqueeze(1) * torch.randn(n, 2, generator=g)

    def __len__(self) -> int:
        return len(self.y)

    def __getitem__(self, i: int) -> tuple[torch.Tensor, torch.Tensor]:
        return self.x[i], self.y[i]

    def __getitems__(self, indices: list[int]) -> tuple[torch.Tensor, torch.Tensor]:
        """A whole batch by one indexing operation (the DataLoader uses it when it exists)."""
        index = torch.as_tensor(indices)
        return self.x[index], self.y[index]


def batched(batch: tuple[torch.Tensor, torch.Tensor]) -> tuple[torch.Tensor, torch.Tensor]:
    """Collate for :meth:`Spirals.__getitems__`, whose output is already a batch."""
    return batch
