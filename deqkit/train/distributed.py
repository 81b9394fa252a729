"""Data parallelism over ``torchrun`` processes with ``DistributedDataParallel``.

The application's ``loss(model, batch, config)`` may call any method of the model, so DDP wraps a small
module whose ``forward`` is that loss call (DDP's forward then prepares the bucketed gradient all-reduce
that overlaps the backward pass); the trainer keeps the bare model for evaluation and checkpoints. The
decisions every rank must share (the loss, "this step is bad", "stop now") travel in one small all-reduce
before the backward pass. A collective that fails (another rank died, or hung past ``train.dist_timeout``)
becomes a one-line :class:`TrainingError` instead of a hang or a traceback.
"""

from __future__ import annotations

import atexit
import datetime
import gc
import os
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, Callable, Iterator

import torch
import torch.distributed as dist
from torch import nn

from deqkit.train.errors import TrainingError

LossFn = Callable[[Any], tuple[torch.Tensor, dict[str, Any]]]

# The DDP wrappers of this process, each in a one-element list that shutdown() empties: a DDP reducer must not
# outlive the process group, or its destructor joins gloo's threads while holding the GIL (a hang at exit).
_WRAPPERS: list[list[nn.Module]] = []


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0
    timeout: float | None = None  # seconds a collective may wait for the other ranks

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool, timeout: float) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPU).

    ``timeout`` (seconds) bounds every collective: a rank that dies or stops makes the others fail after
    at most this long instead of waiting forever.
    """
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        with collectives(Dist(int(os.environ.get("RANK", "0")), world, timeout=timeout), "joining the job"):
            dist.init_process_group(backend="nccl" if use_cuda else "gloo",
                                    timeout=datetime.timedelta(seconds=timeout))
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")), timeout=timeout)


def _release_wrappers() -> None:
    if _WRAPPERS:
        for holder in _WRAPPERS:
            holder.clear()
        _WRAPPERS.clear()
        gc.collect()  # a wrapper caught in a reference cycle goes now, while the process group still exists


atexit.register(_release_wrappers)  # also when a run fails before shutdown() (e.g. while restoring)


def shutdown(d: Dist) -> None:
    """Release the DDP wrappers, then leave the process group (the loss functions of this job stop working)."""
    _release_wrappers()
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


# Words gloo/NCCL put in the RuntimeErrors they raise when a peer is gone (seen: "Connection closed by peer",
# "Timed out waiting ...", "Application timeout caused pair closure" when the peer is stopped mid-backward).
_BACKEND_MARKS = ("gloo", "nccl", "timed out", "connection closed", "connection reset", "pair closure")


def is_collective_failure(err: BaseException) -> bool:
    """Whether ``err`` comes from the communication backend (gloo raises plain RuntimeErrors)."""
    if isinstance(err, dist.DistError):
        return True
    text = str(err).lower()
    return isinstance(err, RuntimeError) and any(mark in text for mark in _BACKEND_MARKS)


@contextmanager
def collectives(d: Dist, what: str) -> Iterator[None]:
    """Turn a failed collective inside the block into a one-line :class:`TrainingError`."""
    try:
        yield
    except RuntimeError as err:
        if not d.enabled or not is_collective_failure(err):
            raise
        first = next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)
        raise TrainingError(
            f"rank {d.rank} of {d.world}: lost the other ranks while {what} ({first[:200]}); another rank "
            f"died, or hung past train.dist_timeout={d.timeout} s") from None


class _Loss(nn.Module):
    """The application's loss as a module: DDP's forward runs it, whatever methods of the model it calls."""

    def __init__(self, loss: Callable[..., Any], model: nn.Module, config: Any) -> None:
        super().__init__()
        self.model = model  # a submodule, so DDP finds (and reduces the gradients of) its parameters
        self._loss, self._config = loss, config

    def forward(self, batch: Any) -> tuple[torch.Tensor, dict[str, Any]]:
        return self._loss(self.model, batch, self._config)


def data_parallel(loss: Callable[..., Any], model: nn.Module, config: Any, d: Dist) -> LossFn:
    """``batch -> (loss, logs)``; under ``torchrun`` through DDP, which starts from rank 0's parameters and
    buffers and averages the gradients over the ranks during the backward pass.

    ``find_unused_parameters``: a loss may leave some parameters without a gradient in some steps (SLATE's
    token embedding in some configurations); the graph search it costs is small (docs/cli.md). Rank 0's
    buffers are copied to every rank before each forward (DDP's default).
    """
    if not d.enabled:
        return lambda batch: loss(model, batch, config)
    with collectives(d, "copying rank 0's parameters"):
        holder = [nn.parallel.DistributedDataParallel(_Loss(loss, model, config), find_unused_parameters=True)]
    _WRAPPERS.append(holder)
    return lambda batch: holder[0](batch)


def agree(scalars: torch.Tensor, d: Dist) -> torch.Tensor:
    """The sum of the 1-D ``scalars`` over ranks: one small all-reduce carrying the shared decisions."""
    if not d.enabled:
        return scalars
    device = torch.device("cuda", d.local_rank) if dist.get_backend() == "nccl" else torch.device("cpu")
    total = scalars.float().to(device)
    dist.all_reduce(total)
    return total.cpu()


def params_in_sync(model: nn.Module, d: Dist) -> bool:
    """Whether every rank holds exactly rank 0's parameters."""
    if not d.enabled:
        return True
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    ref = flat.clone()
    differs = torch.tensor([0.0], device=flat.device)  # NCCL needs device tensors
    with collectives(d, "comparing parameters at the end of training"):
        dist.broadcast(ref, src=0)
        differs += float(not torch.equal(flat, ref))
        dist.all_reduce(differs)
    return differs.item() == 0
