"""Entropic optimal transport by log-domain Sinkhorn, with a dict state and implicit (IFT) gradients.

The dual potentials ``{"f": [B, n], "g": [B, m]}`` are a fixed point of one Sinkhorn sweep (ε = blur):

    f_i ← ε log a_i − ε log Σ_j exp((g_j − C_ij) / ε)
    g_j ← ε log b_j − ε log Σ_i exp((f_i − C_ij) / ε)

and the plan is P_ij = exp((f_i + g_j − C_ij) / ε). ``deqkit.fixed_point`` solves the sweep with Anderson
and differentiates the loss ⟨P, C⟩ w.r.t. the cost matrix C and the marginals a, b (through their logits) implicitly (IFT: one
adjoint linear solve at the fixed point). The example checks that gradient against autograd through a long
unrolled Sinkhorn loop and prints their relative difference, the time, and the bytes autograd saves for
backward (the unrolled loop stores every iteration; IFT stores one sweep).

(f + c, g − c) is the same plan for any constant c, so I − J has a null direction; the loss does not see
it, which keeps the adjoint system consistent and GMRES solves it.

Run:  python examples/sinkhorn.py [--steps 2000] [--quick]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable

import torch

import deqkit
from deqkit.backward import IFT
from deqkit.diagnostics import saved_tensor_bytes
from deqkit.solvers import Anderson


def sinkhorn_sweep(C: torch.Tensor, log_a: torch.Tensor, log_b: torch.Tensor, eps: float) -> Callable[[dict], dict]:
    """The map {f, g} -> {f, g} of one Sinkhorn sweep for costs ``C: [B, n, m]`` and log-marginals [B, n], [B, m]."""

    def sweep(state: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
        f = eps * log_a - eps * torch.logsumexp((state["g"][:, None, :] - C) / eps, dim=2)
        g = eps * log_b - eps * torch.logsumexp((f[:, :, None] - C) / eps, dim=1)
        return {"f": f, "g": g}

    return sweep


def transport_cost(state: dict[str, torch.Tensor], C: torch.Tensor, eps: float) -> torch.Tensor:
    """⟨P, C⟩ summed over the batch, P_ij = exp((f_i + g_j − C_ij) / ε)."""
    P = torch.exp((state["f"][:, :, None] + state["g"][:, None, :] - C) / eps)
    return (P * C).sum()


def problem(batch: int, n: int, m: int, seed: int) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Random 2-D point clouds: squared-distance costs ``C: [B, n, m]`` and marginal logits [B, n], [B, m].

    The marginals are a = softmax(α), b = softmax(β): both sum to one in float64, as balanced OT needs
    (with Σa ≠ Σb there is no fixed point; the potentials drift by a constant every sweep).
    """
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, n, 2, generator=gen, dtype=torch.float64)
    y = torch.rand(batch, m, 2, generator=gen, dtype=torch.float64) + 0.3
    alpha = torch.randn(batch, n, generator=gen, dtype=torch.float64)
    beta = torch.randn(batch, m, generator=gen, dtype=torch.float64)
    return torch.cdist(x, y) ** 2, alpha, beta


def gradients(loss_fn: Callable[..., torch.Tensor], *inputs: torch.Tensor) -> tuple[list[torch.Tensor], int, float]:
    """The gradient of ``loss_fn(*inputs)`` w.r.t. every input, the bytes saved for backward, and the time."""
    inputs = tuple(t.clone().requires_grad_() for t in inputs)
    start = time.perf_counter()
    loss, nbytes = saved_tensor_bytes(lambda: loss_fn(*inputs))
    grads = torch.autograd.grad(loss, inputs)
    return list(grads), nbytes, time.perf_counter() - start


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=1000, help="sweeps of the unrolled reference loop")
    parser.add_argument("--quick", action="store_true", help="a smaller problem and at most 400 reference sweeps")
    parser.add_argument("--eps", type=float, default=0.05, help="entropic blur ε (costs are in [0, 2])")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    batch, n, m = (2, 20, 30) if args.quick else (4, 50, 60)
    steps = min(args.steps, 400) if args.quick else args.steps
    eps = args.eps
    torch.set_num_threads(1)
    C, alpha, beta = problem(batch, n, m, args.seed)
    zeros = {"f": C.new_zeros(batch, n), "g": C.new_zeros(batch, m)}
    nfe = []

    def implicit(C, alpha, beta):
        sweep = sinkhorn_sweep(C, alpha.log_softmax(1), beta.log_softmax(1), eps)
        state, info = deqkit.fixed_point(sweep, zeros, solver=Anderson(m=8), backward=IFT(tol=1e-10, max_iter=200),
                                         tol=1e-10, max_iter=500, stop_mode="abs")
        nfe.append(info.nfe)
        return transport_cost(state, C, eps)

    def unrolled(C, alpha, beta):
        state, sweep = zeros, sinkhorn_sweep(C, alpha.log_softmax(1), beta.log_softmax(1), eps)
        for _ in range(steps):
            state = sweep(state)
        return transport_cost(state, C, eps)

    g_ift, bytes_ift, t_ift = gradients(implicit, C, alpha, beta)
    g_unr, bytes_unr, t_unr = gradients(unrolled, C, alpha, beta)
    with torch.no_grad():
        gap = (unrolled(C, alpha, beta) - implicit(C, alpha, beta)).abs().item()
        sweep = sinkhorn_sweep(C, alpha.log_softmax(1), beta.log_softmax(1), eps)
        _, plain = deqkit.fixed_point(sweep, zeros, solver="iteration", tol=1e-10, max_iter=5000, stop_mode="abs")
    rel = {name: ((gi - gu).norm() / gu.norm()).item() for name, gi, gu in zip(("C", "α", "β"), g_ift, g_unr)}

    print(f"Sinkhorn: {batch} problems of {n}x{m} points, ε = {eps}, float64; loss ⟨P, C⟩, a = softmax(α), b = softmax(β)")
    print(f"sweeps to ‖f(z) − z‖ ≤ 1e-10: Anderson {nfe[0].tolist()}, plain Sinkhorn {plain.nfe.tolist()}")
    print(f"|loss(IFT) − loss(unrolled)| = {gap:.1e}")
    print(f"{'gradient':<24}{'time':>8}{'saved for backward':>20}")
    print(f"{'IFT (fixed_point)':<24}{t_ift:>7.2f}s{bytes_ift / 2**20:>16.2f} MiB")
    print(f"{f'unrolled ({steps} sweeps)':<24}{t_unr:>7.2f}s{bytes_unr / 2**20:>16.2f} MiB")
    print("‖∇_IFT − ∇_unrolled‖ / ‖∇_unrolled‖:  " + ",  ".join(f"{k}: {v:.1e}" for k, v in rel.items()))
    return {"relative_difference": rel, "bytes": (bytes_ift, bytes_unr), "seconds": (t_ift, t_unr), "nfe": nfe[0]}


if __name__ == "__main__":
    main()
