"""Memory a forward pass keeps for backward, measured from autograd's saved tensors."""

from __future__ import annotations

import weakref
from typing import Callable, TypeVar

import torch

T = TypeVar("T")


def saved_tensor_bytes(forward: Callable[[], T]) -> tuple[T, int]:
    """Run ``forward()`` and return its output and the bytes of distinct storages autograd saved meanwhile
    and still holds when it returns.

    This is what training keeps alive between forward and backward (activations), device-agnostic and
    independent of the allocator; e.g. it grows with the iterations for ``Unrolled`` and not for ``IFT``.
    Tensors saved by graphs that were freed before ``forward`` returned (a step that differentiates
    internally, like DSPN's inner gradient under a no-grad solve) are not counted.
    """
    saved: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        saved.append(weakref.ref(t))
        return t

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    storages: dict[int, int] = {}
    for ref in saved:
        t = ref()
        if t is not None:
            storage = t.untyped_storage()
            storages[storage.data_ptr()] = storage.nbytes()
    return out, sum(storages.values())
