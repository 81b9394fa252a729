"""Bytes saved for backward by each gradient estimator, against the number of forward iterations.

A fixed-count solve (``tol=None``, plain iteration, ``max_iter`` ∈ {5, 10, 20, 40}) of the tanh DEQ
f(z) = tanh(z Wᵀ + x Uᵀ), B = 64, D = 256, float32, with W and x requiring grad. Every tensor autograd saves
during the forward passes through ``torch.autograd.graph.saved_tensors_hooks``; once the forward is done the
still-alive ones are summed by distinct storage (``untyped_storage().nbytes()``), leaving out the storages of
W, U and x themselves. deqkit: Unrolled / Neumann(k=1) / Phantom(k=5, damping 0.5) / IFT. torchdeq
(``get_deq`` in train mode, ``f_tol=0`` so it runs every iteration): grad=1 (its 1-step gradient, the
Neumann k=1 analogue), grad=5 with tau=0.5 (Phantom), ift=True; it has no unrolled mode.

    PYTHONPATH=. python benchmarks/memory.py            # a few seconds
    PYTHONPATH=. python benchmarks/memory.py --quick
"""

from __future__ import annotations

import gc
import weakref
from typing import Callable

import torch
import torchdeq
from common import RESULTS, TanhDEQ, parser, print_table, tanh_problem, write_json

import deqkit
from deqkit.backward import IFT, Neumann, Phantom, Unrolled

ESTIMATORS = {  # name -> (deqkit estimator, torchdeq get_deq options or None when it has no equivalent)
    "unrolled": (Unrolled(), None),
    "neumann k=1": (Neumann(k=1), {"grad": 1}),
    "phantom k=5 λ=0.5": (Phantom(k=5, damping=0.5), {"grad": 5, "tau": 0.5}),
    "ift": (IFT(), {"ift": True}),
}


def saved_bytes(forward: Callable[[], torch.Tensor], exclude: list[torch.Tensor]) -> tuple[int, int]:
    """(bytes, storages) saved for backward by ``forward()`` and still held by the graph when it returns.

    The pack hook hands autograd a detached alias of each saved tensor (same storage): returning the tensor
    itself would tie a saved output to its own graph node in a reference cycle and keep it alive forever.
    A weak reference to the alias tells whether the graph still holds it. (Backward through these aliases
    is not run: a custom Function that differentiates its saved tensors again needs the originals.)
    """
    saved: list[weakref.ref] = []

    def pack(t: torch.Tensor) -> torch.Tensor:
        alias = t.detach()
        saved.append(weakref.ref(alias))
        return alias

    with torch.autograd.graph.saved_tensors_hooks(pack, lambda t: t):
        out = forward()
    gc.collect()
    skip = {t.untyped_storage().data_ptr() for t in exclude}
    storages = {}
    for ref in saved:
        t = ref()
        if t is not None and t.untyped_storage().data_ptr() not in skip:
            storages[t.untyped_storage().data_ptr()] = t.untyped_storage().nbytes()
    del out
    return sum(storages.values()), len(storages)


def deqkit_forward(p: TanhDEQ, estimator, n: int) -> Callable[[], torch.Tensor]:
    z0 = torch.zeros_like(p.x)
    return lambda: deqkit.fixed_point(p, z0, solver="iteration", backward=estimator, tol=None, max_iter=n)[0]


def torchdeq_forward(p: TanhDEQ, options: dict, n: int) -> Callable[[], torch.Tensor]:
    deq = torchdeq.get_deq(f_solver="fixed_point_iter", f_max_iter=n, f_tol=0.0, **options)
    deq.train()
    z0 = torch.zeros_like(p.x)
    return lambda: deq(p, z0)[0][-1]


def main() -> None:
    args = parser(__doc__, RESULTS / "memory.json").parse_args()
    torch.set_num_threads(1)
    batch, width = 64, 256
    iterations = (5, 10) if args.quick else (5, 10, 20, 40)
    p = tanh_problem("gaussian", 0.9, batch, width)
    p.W.requires_grad_()
    p.x.requires_grad_()
    inputs = [p.W, p.U, p.x]
    activation = batch * width * p.x.element_size()  # bytes of one [B, D] tensor
    rows = []
    for name, (estimator, td_options) in ESTIMATORS.items():
        for n in iterations:
            dk_bytes, dk_tensors = saved_bytes(deqkit_forward(p, estimator, n), inputs)
            td_bytes = td_tensors = None
            if td_options is not None:
                td_bytes, td_tensors = saved_bytes(torchdeq_forward(p, td_options, n), inputs)
            rows.append(
                {"estimator": name, "max_iter": n, "deqkit_bytes": dk_bytes, "deqkit_storages": dk_tensors,
                 "torchdeq_bytes": td_bytes, "torchdeq_storages": td_tensors}
            )
    print_table(
        f"bytes saved for backward, fixed count, B={batch}, D={width}, float32 (one [B, D] tensor = {activation // 1024} KiB)",
        ["estimator", "max_iter", "deqkit KiB", "deqkit [B,D] tensors", "torchdeq KiB", "torchdeq [B,D] tensors"],
        [[r["estimator"], r["max_iter"], r["deqkit_bytes"] / 1024, r["deqkit_bytes"] / activation,
          None if r["torchdeq_bytes"] is None else r["torchdeq_bytes"] / 1024,
          None if r["torchdeq_bytes"] is None else r["torchdeq_bytes"] / activation] for r in rows],
    )
    config = {"batch": batch, "width": width, "dtype": "float32", "iterations": list(iterations), "bytes_per_activation": activation}
    write_json(args.json, "memory", config, {"rows": rows})


if __name__ == "__main__":
    main()
