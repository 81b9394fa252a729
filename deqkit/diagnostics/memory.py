"""Memory a forward pass keeps for backward, measured from autograd's saved tensors."""

from __future__ import annotations

from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def saved_tensor_bytes(forward: Callable[[], T]) -> tuple[T, int]:
    """Run ``forward()`` and return its output and the bytes of distinct storages autograd saved meanwhile.

    This is what training keeps alive between forward and backward (activations), device-agnostic and
    independent of the allocator; e.g. it grows with the iterations for ``Unrolled`` and not for ``IFT``.
    """
    storages: dict[int, int] = {}

    def pack(t: torch.Tensor) -> torch.Tensor:
        storage = t.untyped_storage()
        storages[storage.data_ptr()] = storage.nbytes()
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    return out, sum(storages.values())
