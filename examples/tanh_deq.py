"""A tanh DEQ layer z* = tanh(W z* + U x + b), trained on two spirals with IFT and with Neumann(1) gradients.

W = γ V / ‖V‖₂ with γ < 1 (an exact spectral-norm parametrisation), and tanh is 1-Lipschitz, so the step
is a contraction for every V: the fixed point exists, is unique, and plain iteration and the IFT adjoint
solve both converge. The layer is ``deqkit.FixedPoint(step)``; swapping the gradient is one argument:
``backward=IFT()`` (exact implicit gradient) or ``backward=Neumann(1)`` (one step through f, Jacobian-free).

Run:  python examples/tanh_deq.py [--steps 200] [--quick]
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from torch import nn

import deqkit
from deqkit.backward import IFT, Neumann
from deqkit.solvers import Anderson


def two_spirals(n: int, *, turns: float = 1.5, noise: float = 0.05, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """``n`` points ``x: [n, 2]`` on two interleaved spiral arms, labels ``y: [n]`` in {0, 1}."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(2, (n,), generator=g)
    r = torch.rand(n, generator=g).sqrt()  # uniform density in the disc
    theta = 2 * math.pi * turns * r + math.pi * y
    x = torch.stack([r * torch.cos(theta), r * torch.sin(theta)], dim=1)
    return x + noise * torch.randn(n, 2, generator=g), y


class TanhDEQ(nn.Module):
    """Points ``x: [B, 2]`` -> logits ``[B, 2]`` through z* = tanh(W z* + U x + b), z*: [B, hidden]."""

    def __init__(self, hidden: int, backward: deqkit.backward.BackwardEstimator, gamma: float = 0.9):
        super().__init__()
        self.gamma = gamma
        self.V = nn.Parameter(torch.randn(hidden, hidden) / math.sqrt(hidden))
        self.inject = nn.Sequential(nn.Linear(2, hidden), nn.Tanh(), nn.Linear(hidden, hidden))  # U x + b
        self.head = nn.Linear(hidden, 2)
        self.deq = deqkit.FixedPoint(self.step, solver=Anderson(m=5), backward=backward, tol=1e-4, max_iter=60)

    @staticmethod
    def step(z: torch.Tensor, W: torch.Tensor, u: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ W.T + u)

    def weight(self) -> torch.Tensor:
        """W = γ V / ‖V‖₂, so ‖W‖₂ = γ < 1 (one small SVD per forward, not per solver iteration)."""
        return self.gamma * self.V / torch.linalg.matrix_norm(self.V, ord=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, deqkit.SolveInfo]:
        u = self.inject(x)
        z, info = self.deq(torch.zeros_like(u), self.weight(), u)
        return self.head(z), info


def train(backward: deqkit.backward.BackwardEstimator, steps: int, n: int, hidden: int, seed: int) -> dict:
    """Full-batch Adam on two spirals; returns the loss/accuracy history and the mean forward NFE."""
    torch.manual_seed(seed)
    x, y = two_spirals(n, seed=seed)
    x_test, y_test = two_spirals(1000, seed=seed + 1)
    model = TanhDEQ(hidden, backward)
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    losses, nfes = [], []
    start = time.perf_counter()
    for _ in range(steps):
        logits, info = model(x)
        loss = nn.functional.cross_entropy(logits, y)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(loss.item())
        nfes.append(info.nfe.float().mean().item())
    seconds = time.perf_counter() - start
    with torch.no_grad():
        logits, info = model(x_test)
    accuracy = (logits.argmax(1) == y_test).float().mean().item()
    return {"losses": losses, "accuracy": accuracy, "nfe": sum(nfes) / len(nfes), "test_nfe": info.nfe.float().mean().item(), "seconds": seconds}


def main(argv: list[str] | None = None) -> dict[str, dict]:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=200, help="Adam steps per gradient estimator")
    parser.add_argument("--quick", action="store_true", help="a few seconds: 60 steps on 256 points")
    parser.add_argument("--hidden", type=int, default=32)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    steps, n = (min(args.steps, 60), 256) if args.quick else (args.steps, 512)
    torch.set_num_threads(1)
    results = {}
    print(f"two spirals, {n} points, hidden {args.hidden}, {steps} Adam steps, ‖W‖₂ = 0.9")
    print(f"{'backward':<12}{'loss start':>11}{'loss end':>10}{'test acc':>10}{'fwd NFE':>9}{'time':>8}")
    for name, estimator in [("IFT()", IFT()), ("Neumann(1)", Neumann(1))]:
        r = train(estimator, steps, n, args.hidden, args.seed)
        results[name] = r
        print(f"{name:<12}{r['losses'][0]:>11.3f}{r['losses'][-1]:>10.3f}{r['accuracy']:>10.3f}{r['nfe']:>9.1f}{r['seconds']:>7.1f}s")
    return results


if __name__ == "__main__":
    main()
