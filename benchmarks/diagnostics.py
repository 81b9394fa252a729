"""Accuracy and cost of deqkit's Jacobian spectral estimates against dense linear algebra and torchdeq.

Problems: f(z) = tanh(W_b z + U_b x_b) with an independent W_b per sample, so one batch is a sample of
``--batch`` different Jacobians J_b = diag(1 − tanh²(·)) W_b, taken at the fixed point found by
``deqkit.fixed_point``. Kinds of W: ``gaussian`` (‖W‖₂ = 0.9), ``orthogonal`` (0.95·Q; diag·Q is non-normal),
``nonnormal`` (Q·diag·(I + strong strictly upper triangular), ‖W‖₂ = 1) and ``pair`` (Q T Qᵀ whose dominant
eigenvalues are a complex-conjugate pair r·e^{±iθ}, r ∈ [1, 1.2]). The truth is float64 ``svdvals`` /
``eigvals`` of the dense J_b; the estimators run in float32 as a model would.

Estimators: ``spectral_norm`` (Lanczos, default; and plain power iteration), ``spectral_radius`` (Arnoldi,
default; ARPACK on a few samples), and torchdeq's ``power_method`` (100 Rayleigh-quotient power steps, what
``sradius_mode`` reports). Products are counted by wrapping ``torch.func.jvp``/``vjp`` and
``torch.autograd.grad``; ``f evals`` counts calls of f (a JVP traces f once; one VJP linearisation serves
all VJPs).

    python benchmarks/diagnostics.py                 # widths 64/256/1024, ~1-2 min on one core
    python benchmarks/diagnostics.py --full          # bigger batches, ARPACK on 8 samples (D <= 256)
"""

from __future__ import annotations

import argparse
import contextlib
import math
import sys
import time
from pathlib import Path
from typing import Callable, Iterator

import torch

sys.path.insert(0, str(Path(__file__).parent))
from common import RESULTS, print_table, write_json  # noqa: E402

import deqkit  # noqa: E402
import deqkit.diagnostics.spectral as spectral  # noqa: E402
from deqkit.diagnostics import spectral_norm, spectral_radius  # noqa: E402

KINDS = ("gaussian", "orthogonal", "nonnormal", "pair")
F64 = torch.float64


def make_w(kind: str, batch: int, width: int, gen: torch.Generator) -> torch.Tensor:
    """A batch of recurrent matrices W [B, D, D] of the given kind (float64)."""
    randn = lambda *shape: torch.randn(*shape, generator=gen, dtype=F64)  # noqa: E731
    if kind == "gaussian":
        w = randn(batch, width, width)
        return 0.9 * w / torch.linalg.matrix_norm(w, ord=2)[:, None, None]
    q, _ = torch.linalg.qr(randn(batch, width, width))
    if kind == "orthogonal":
        return 0.95 * q
    if kind == "nonnormal":
        d = 0.5 + torch.rand(batch, width, generator=gen, dtype=F64)
        upper = torch.triu(randn(batch, width, width), 1) * 3.0 / math.sqrt(width)
        w = q @ (d[:, :, None] * (torch.eye(width, dtype=F64) + upper))
        return w / torch.linalg.matrix_norm(w, ord=2)[:, None, None]
    if kind == "pair":
        lam = torch.rand(batch, width, generator=gen, dtype=F64) * 1.4 - 0.7
        t = torch.diag_embed(lam) + torch.triu(randn(batch, width, width), 1) / math.sqrt(width)
        r = 1.0 + 0.2 * torch.rand(batch, generator=gen, dtype=F64)
        th = 0.3 + 2.5 * torch.rand(batch, generator=gen, dtype=F64)
        t[:, 0, 0] = t[:, 1, 1] = r * torch.cos(th)
        t[:, 0, 1], t[:, 1, 0] = r * torch.sin(th), -r * torch.sin(th)
        return q @ t @ q.transpose(1, 2)
    raise ValueError(f"unknown kind {kind!r}; valid: {', '.join(KINDS)}")


class TanhStep:
    """f(z) = tanh(W_b z_b + U_b x_b) per sample, in float32; ``calls`` counts evaluations of f."""

    def __init__(self, w: torch.Tensor, ux: torch.Tensor):
        self.w, self.ux, self.calls = w, ux, 0

    def __call__(self, z: torch.Tensor) -> torch.Tensor:
        self.calls += 1
        return torch.tanh(torch.einsum("bij,bj->bi", self.w, z) + self.ux)

    def first(self, n: int) -> "TanhStep":
        """The same step on the first n samples only."""
        return TanhStep(self.w[:n], self.ux[:n])


class Problem:
    """A batch of tanh steps, their fixed point z* and the dense float64 spectral norm / radius of J(z*)."""

    def __init__(self, kind: str, batch: int, width: int, seed: int):
        gen = torch.Generator().manual_seed(seed)
        w = make_w(kind, batch, width, gen)
        u = torch.randn(batch, width, width, generator=gen, dtype=F64) / math.sqrt(width)
        x = torch.randn(batch, width, generator=gen, dtype=F64)
        self.step = TanhStep(w.float(), torch.einsum("bij,bj->bi", u, x).float())
        with torch.no_grad():
            self.z, self.info = deqkit.fixed_point(
                self.step, torch.zeros(batch, width), solver="anderson", tol=1e-5, max_iter=100
            )
        pre = torch.einsum("bij,bj->bi", self.step.w.double(), self.z.double()) + self.step.ux.double()
        jac = (1 - torch.tanh(pre) ** 2)[:, :, None] * self.step.w.double()
        self.norm = torch.linalg.svdvals(jac)[:, 0]
        self.radius = torch.linalg.eigvals(jac).abs().amax(dim=1)


class Counter:
    """Counts JVPs and VJPs by wrapping the functions deqkit's diagnostics and torchdeq call."""

    def __init__(self) -> None:
        self.jvp = 0
        self.vjp = 0

    @contextlib.contextmanager
    def patched(self, autograd: bool) -> Iterator["Counter"]:
        """Count deqkit's torch.func products, or (``autograd=True``) calls of torch.autograd.grad, which
        torch.func's own VJPs also go through."""
        jvp, vjp, grad = spectral.jvp, spectral.vjp, torch.autograd.grad

        def counted_jvp(*args, **kwargs):
            self.jvp += 1
            return jvp(*args, **kwargs)

        def counted_vjp(*args, **kwargs):
            out, fn = vjp(*args, **kwargs)

            def counted_fn(*a, **k):
                self.vjp += 1
                return fn(*a, **k)

            return out, counted_fn

        def counted_grad(*args, **kwargs):
            self.vjp += 1
            return grad(*args, **kwargs)

        if autograd:
            torch.autograd.grad = counted_grad
        else:
            spectral.jvp, spectral.vjp = counted_jvp, counted_vjp
        try:
            yield self
        finally:
            spectral.jvp, spectral.vjp, torch.autograd.grad = jvp, vjp, grad


def torchdeq_radius(f: TanhStep, z: torch.Tensor) -> torch.Tensor:
    """torchdeq's sradius: ``power_method(f(z), z, n_iters=100)`` as its DEQ core calls it."""
    from torchdeq.loss import power_method

    with torch.enable_grad():
        z = z.detach().requires_grad_(True)
        _, radius = power_method(f(z), z, n_iters=100)
    return radius.detach()


def measure(
    step: TanhStep, name: str, truth: torch.Tensor, run: Callable[[], torch.Tensor], rows: list, record: dict
) -> None:
    """Run one estimator, compare with the first ``len(estimate)`` entries of ``truth``, and record it."""
    counter = Counter()
    step.calls = 0
    with counter.patched(autograd="torchdeq" in name):
        start = time.perf_counter()
        est = run()
        seconds = time.perf_counter() - start
    truth = truth[: est.shape[0]]
    err = (est.double() - truth).abs() / truth
    result = {
        "estimator": name,
        "samples": int(err.numel()),
        "median_rel_err": float(err.median()),
        "p95_rel_err": float(err.quantile(0.95)),
        "max_rel_err": float(err.max()),
        "within_1pct": float((err < 0.01).double().mean()),
        "within_5pct": float((err < 0.05).double().mean()),
        "jvp": counter.jvp,
        "vjp": counter.vjp,
        "f_evals": step.calls,
        "seconds": seconds,
    }
    record.setdefault("estimators", []).append(result)
    rows.append([record["kind"], record["width"], name, result["samples"], result["median_rel_err"], result["p95_rel_err"],
                 result["within_5pct"], result["within_1pct"], result["jvp"], result["vjp"], result["f_evals"], seconds])


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--full", action="store_true", help="batches of 64/64/24 and ARPACK on 8 samples (~10 min)")
    p.add_argument("--widths", type=int, nargs="+", default=[64, 256, 1024])
    p.add_argument("--kinds", nargs="+", default=list(KINDS), choices=KINDS)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--json", type=Path, default=RESULTS / "diagnostics.json", help="where to write results")
    args = p.parse_args(argv)
    torch.set_num_threads(1)

    def batch_for(width: int) -> int:
        return (64 if width <= 256 else 24) if args.full else (32 if width <= 256 else 8)

    arpack_samples = 8 if args.full else 4
    rows: list = []
    records: list = []
    for width in args.widths:
        for k, kind in enumerate(args.kinds):
            problem = Problem(kind, batch_for(width), width, seed=args.seed + 1000 * k + width)
            record = {"kind": kind, "width": width, "batch": problem.z.shape[0],
                      "solve_converged": float(problem.info.converged.double().mean())}
            gen = lambda: torch.Generator().manual_seed(args.seed)  # noqa: E731
            f, z = problem.step, problem.z
            measure(f, "norm lanczos (deqkit)", problem.norm, lambda: spectral_norm(f, z, generator=gen()), rows, record)
            measure(f, "norm power (deqkit)", problem.norm,
                    lambda: spectral_norm(f, z, method="power", generator=gen()), rows, record)
            measure(f, "radius arnoldi (deqkit)", problem.radius, lambda: spectral_radius(f, z, generator=gen()), rows, record)
            if width <= 256:  # ARPACK: thousands of full-batch JVPs per sample, minutes each at D = 1024
                few = f.first(arpack_samples)
                measure(few, "radius arpack (deqkit)", problem.radius,
                        lambda: spectral_radius(few, z[:arpack_samples], method="arpack", generator=gen()), rows, record)
            torch.manual_seed(args.seed)
            measure(f, "radius power_method (torchdeq)", problem.radius, lambda: torchdeq_radius(f, z), rows, record)
            records.append(record)
            print(f"done {kind} width {width}", flush=True)

    columns = ["kind", "D", "estimator", "n", "median err", "p95 err", "≤5%", "≤1%", "JVPs", "VJPs", "f evals", "s"]
    print_table("Jacobian spectral estimates vs dense float64 SVD / eigvals (relative error per sample)", columns, rows)
    config = {"full": args.full, "widths": args.widths, "kinds": args.kinds, "seed": args.seed,
              "batches": {w: batch_for(w) for w in args.widths}, "arpack_samples": arpack_samples,
              "estimator_dtype": "float32", "truth_dtype": "float64", "threads": 1}
    write_json(args.json, "diagnostics", config, records)


if __name__ == "__main__":
    main()
