"""Deterministic batching so an interrupted and resumed run sees exactly the same batches.

The order of epoch ``e`` is a permutation drawn from a generator seeded by ``(seed, e)``, and a run's
position is just ``(epoch, batch index)``; resuming rebuilds the permutation and starts at the index, without
touching the global RNG. Under data parallelism every rank draws the same permutation and takes every
``world``-th index, so the ranks see disjoint shards of each global batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
from torch.utils._pytree import tree_map
from torch.utils.data import DataLoader, Dataset

from deqkit.train.errors import UsageError


@dataclass
class EpochBatches:
    """Index batches of one rank: ``batches(epoch)`` is a list of ``batch_size`` index lists."""

    size: int
    batch_size: int
    seed: int
    rank: int = 0
    world: int = 1

    def __post_init__(self) -> None:
        if self.size < self.batch_size * self.world:
            raise UsageError(f"the training set has {self.size} items, fewer than one batch of "
                             f"{self.batch_size} x {self.world} process(es); lower train.batch_size")

    @property
    def per_epoch(self) -> int:
        return (self.size // self.world) // self.batch_size

    def batches(self, epoch: int) -> list[list[int]]:
        generator = torch.Generator().manual_seed(self.seed * 1_000_003 + epoch)
        order = torch.randperm(self.size, generator=generator)[self.rank::self.world].tolist()
        return [order[i * self.batch_size:(i + 1) * self.batch_size] for i in range(self.per_epoch)]


class TrainStream:
    """An endless iterator over training batches that knows its position (``state()``/``load_state()``)."""

    def __init__(self, dataset: Dataset, batches: EpochBatches, *, collate: Callable | None = None,
                 num_workers: int = 0) -> None:
        self.dataset, self.index_batches = dataset, batches
        self.collate, self.num_workers = collate, num_workers
        self.epoch, self.index = 0, 0  # position of the next batch
        self._iter: Iterator[Any] | None = None

    def state(self) -> dict[str, int]:
        return {"epoch": self.epoch, "index": self.index}

    def load_state(self, state: dict[str, int]) -> None:
        self.epoch, self.index = int(state["epoch"]), int(state["index"])
        self._iter = None

    def _open(self) -> None:
        remaining = self.index_batches.batches(self.epoch)[self.index:]
        self._iter = iter(make_loader(self.dataset, remaining, self.collate, self.num_workers))

    def __iter__(self) -> "TrainStream":
        return self

    def __next__(self) -> Any:
        while True:
            if self._iter is None:
                self._open()
            try:
                batch = next(self._iter)  # type: ignore[arg-type]
            except StopIteration:
                self.epoch, self.index, self._iter = self.epoch + 1, 0, None
                continue
            self.index += 1
            return batch


def make_loader(dataset: Dataset, batch_indices: list[list[int]], collate: Callable | None = None,
                num_workers: int = 0) -> DataLoader:
    """A DataLoader over explicit index batches. Its own seeded generator keeps it from drawing on the
    global RNG (which would make resumed runs differ); datasets with ``__getitems__`` get whole batches."""
    return DataLoader(dataset, batch_sampler=batch_indices, collate_fn=collate, num_workers=num_workers,
                      generator=torch.Generator().manual_seed(0))


def eval_batches(dataset: Dataset, batch_size: int, limit: int | None = None,
                 collate: Callable | None = None, num_workers: int = 0) -> DataLoader:
    """Batches of a split in order (the last one may be smaller), at most ``limit`` of them."""
    n = len(dataset)  # type: ignore[arg-type]
    batches = [list(range(i, min(i + batch_size, n))) for i in range(0, n, batch_size)]
    return make_loader(dataset, batches[:limit] if limit else batches, collate, num_workers)


def to_device(batch: Any, device: torch.device) -> Any:
    """Move every tensor of a (nested) batch to ``device``."""
    return tree_map(lambda x: x.to(device, non_blocking=True) if isinstance(x, torch.Tensor) else x, batch)
