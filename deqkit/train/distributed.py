"""Data parallelism over ``torchrun`` processes, without wrapping the model.

Gradients are averaged with one ``all_reduce`` of a flat buffer after the backward pass, together with a
few scalars every rank must agree on (the loss, "this step is bad", "stop now"). Not wrapping the model in
``DistributedDataParallel`` keeps any ``loss(model, batch, config)`` valid, whichever methods of the model
it calls, and fixed-point layers whose gradient comes from a backward hook need no special care.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn


@dataclass(frozen=True)
class Dist:
    """This process's place in the job (a single process is rank 0 of 1)."""

    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def init_distributed(use_cuda: bool) -> Dist:
    """Join the process group that ``torchrun`` describes in the environment (NCCL on GPUs, gloo on CPU)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Dist()
    if not dist.is_initialized():
        dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    return Dist(rank=dist.get_rank(), world=dist.get_world_size(),
                local_rank=int(os.environ.get("LOCAL_RANK", "0")))


def shutdown(d: Dist) -> None:
    if d.enabled and dist.is_initialized():
        dist.destroy_process_group()


def broadcast_module(model: nn.Module, d: Dist) -> None:
    """Copy rank 0's parameters and floating buffers to every rank."""
    if not d.enabled:
        return
    for tensor in list(model.parameters()) + [b for b in model.buffers() if b.is_floating_point()]:
        dist.broadcast(tensor.data, src=0)


def sync_gradients(params: list[torch.Tensor], scalars: torch.Tensor, d: Dist) -> torch.Tensor:
    """Average the gradients of ``params`` over ranks and sum ``scalars`` (1-D); returns the summed scalars.

    A missing gradient counts as zeros so every rank reduces buffers of the same layout.
    """
    if not d.enabled:
        return scalars
    grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
    flat = torch.cat([g.reshape(-1).float() for g in grads] + [scalars.float().to(grads[0].device)])
    dist.all_reduce(flat)
    offset = 0
    for p, g in zip(params, grads):
        n = g.numel()
        p.grad = (flat[offset:offset + n] / d.world).view_as(p).to(p.dtype)
        offset += n
    return flat[offset:].to(scalars.device)


def params_in_sync(model: nn.Module, d: Dist) -> bool:
    """Whether every rank holds exactly rank 0's parameters."""
    if not d.enabled:
        return True
    flat = torch.cat([p.detach().reshape(-1).float() for p in model.parameters()])
    ref = flat.clone()
    dist.broadcast(ref, src=0)
    differs = torch.tensor([float(not torch.equal(flat, ref))], device=flat.device)  # NCCL needs device tensors
    dist.all_reduce(differs)
    return differs.item() == 0
