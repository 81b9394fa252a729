"""Gradient quality against cost: every deqkit estimator against the dense implicit-function-theorem oracle.

On each problem of ``problems.py`` (a batch of 8 samples): solve to a relative residual of 1e-6 (samples that
do not get there are left out and counted), take ℓ = Σ⟨c, z*⟩ with a seeded c, and compare dℓ/d(inputs) of
Neumann(k), Phantom(k, λ) and IFT (GMRES, or the adjoint fixed point solved by iteration / Anderson) with
the oracle gᵀ ∂f/∂inputs, g = (I − Jᵀ)⁻¹ c from dense per-sample Jacobians J. Reported: cosine similarity and
relative error ‖ĝ − g‖/‖g‖ over the flattened gradient, and the backward time (the estimator's forward
steps from z* plus the backward pass; median of interleaved repeats). The spectral radius ρ(J) says why a
Neumann series does or does not converge: it needs ρ < 1.

    python -m benchmarks --only gradients
    PYTHONPATH=. python benchmarks/gradients.py --quick
"""

from __future__ import annotations

import statistics
import time

import torch
from common import RESULTS, parser, print_table, write_json
from problems import Problem, build

import deqkit
from deqkit.backward import IFT, Neumann, Phantom
from deqkit.solvers import Anderson, Broyden

ESTIMATORS = {
    "neumann k=1": Neumann(1),
    "neumann k=5": Neumann(5),
    "neumann k=20": Neumann(20),
    "phantom k=5 λ=0.5": Phantom(5, 0.5),
    "phantom k=20 λ=0.5": Phantom(20, 0.5),
    "ift gmres": IFT(tol=1e-6, max_iter=100),
    "ift iteration": IFT(solver="iteration", tol=1e-6, max_iter=100),
    "ift anderson": IFT(solver="anderson", tol=1e-6, max_iter=100),
    "ift iteration, 20 steps (tol=None)": IFT(solver="iteration", tol=None, max_iter=20),
}
PROBLEMS = ["tanh_gaussian_0.9", "tanh_orthogonal_0.99", "slot_attention_init", "slot_attention_trained",
            "sinkhorn_log", "soft_kmeans"]
BATCH = 8


def subset(p: Problem, batch: int) -> Problem:
    take = lambda x: x[:batch] if isinstance(x, torch.Tensor) else x  # noqa: E731
    return Problem(p.name, p.step, p.z0[:batch], tuple(take(x) for x in p.inputs), p.description)


def solve_tight(p: Problem) -> tuple[torch.Tensor, torch.Tensor]:
    """z* of every sample, and which samples reached a relative residual of 1e-6 (best of Broyden and Anderson)."""
    best_z, best_res = None, None
    for solver in (Broyden(), Anderson()):
        with torch.no_grad():
            z, _ = deqkit.fixed_point(p.step, p.z0, inputs=p.inputs, solver=solver, tol=1e-6, max_iter=500)
        res = p.relative_residual(z)
        if best_z is None:
            best_z, best_res = z, res
        else:
            better = res < best_res
            best_z, best_res = torch.where(better[:, None], z, best_z), torch.minimum(res, best_res)
    return best_z, best_res <= 1e-6


def per_sample_jacobians(p: Problem, z: torch.Tensor) -> torch.Tensor:
    """[B, D, D]: ∂f_b/∂z_b for every sample (samples are independent)."""
    tensors = [x for x in p.inputs if isinstance(x, torch.Tensor)]

    def single(zb: torch.Tensor, *xs: torch.Tensor) -> torch.Tensor:
        it = iter(xs)
        inputs = tuple(next(it)[None] if isinstance(x, torch.Tensor) else x for x in p.inputs)
        return p.step(zb[None], *inputs)[0]

    return torch.func.vmap(torch.func.jacrev(single))(z, *tensors)


def flat(grads) -> torch.Tensor:
    return torch.cat([g.reshape(-1) for g in grads])


def compare(p: Problem, repeats: int) -> dict:
    z_all, ok = solve_tight(p)
    keep = ok.nonzero().squeeze(1)
    result = {"problem": p.name, "samples": int(p.z0.shape[0]), "samples_converged": int(keep.numel())}
    if keep.numel() == 0:
        result["rows"] = []
        return result
    take = lambda x: x.index_select(0, keep) if isinstance(x, torch.Tensor) else x  # noqa: E731
    p = Problem(p.name, p.step, z_all.index_select(0, keep), tuple(take(x) for x in p.inputs), p.description)
    z_star = p.z0
    jac = per_sample_jacobians(p, z_star)
    eig = torch.linalg.eigvals(jac.double()).abs().amax(1)
    result["spectral_radius"] = {"max": float(eig.max()), "median": float(eig.median())}
    c = torch.randn(z_star.shape, generator=torch.Generator().manual_seed(5))
    eye = torch.eye(jac.shape[1], dtype=torch.float64)
    g = torch.linalg.solve(eye - jac.double().transpose(1, 2), c.double()[:, :, None])[:, :, 0].to(z_star.dtype)
    inputs = tuple(x.detach().clone().requires_grad_() if isinstance(x, torch.Tensor) else x for x in p.inputs)
    leaves = [x for x in inputs if isinstance(x, torch.Tensor)]
    oracle = flat(torch.autograd.grad(p.step(z_star, *inputs), leaves, g))

    def estimate(estimator) -> torch.Tensor:
        z = estimator.attach(lambda z: p.step(z, *inputs), z_star)
        return flat(torch.autograd.grad((c * z).sum(), leaves))

    rows, times = {}, {name: [] for name in ESTIMATORS}
    for name, estimator in ESTIMATORS.items():
        grad = estimate(estimator)
        rel = float(torch.linalg.vector_norm(grad - oracle) / torch.linalg.vector_norm(oracle))
        cos = float(torch.nn.functional.cosine_similarity(grad.double(), oracle.double(), dim=0))
        rows[name] = {"estimator": name, "cosine": cos, "relative_error": rel, "finite": bool(torch.isfinite(grad).all())}
    for _ in range(repeats):
        for name, estimator in ESTIMATORS.items():
            start = time.perf_counter()
            estimate(estimator)
            times[name].append(time.perf_counter() - start)
    for name, row in rows.items():
        row["seconds"] = statistics.median(times[name])
    result["rows"] = list(rows.values())
    return result


def run(quick: bool, names: list[str] | None = None) -> dict:
    torch.set_num_threads(1)
    names = names or (["tanh_gaussian_0.9", "sinkhorn_log"] if quick else PROBLEMS)
    repeats = 2 if quick else 7
    results = [compare(subset(p, BATCH), repeats) for p in build(names, quick)]
    return {"config": {"quick": quick, "batch": BATCH, "repeats": repeats, "estimators": {k: str(v) for k, v in ESTIMATORS.items()}},
            "problems": results}


def report(results: dict) -> None:
    table = []
    for prob in results["problems"]:
        rho = prob.get("spectral_radius", {}).get("max", float("nan"))
        for r in prob["rows"]:
            table.append([prob["problem"], f"{prob['samples_converged']}/{prob['samples']}", rho, r["estimator"],
                          r["cosine"], r["relative_error"], r["seconds"]])
    print_table("gradient estimators vs the dense IFT oracle (dℓ/d inputs; backward = estimator steps + backward pass)",
                ["problem", "samples", "ρ(J) max", "estimator", "cosine", "rel error", "backward s"], table)


def main() -> None:
    args = parser(__doc__, RESULTS / "gradients.json").parse_args()
    results = run(args.quick)
    report(results)
    write_json(args.json, "gradients", results.pop("config"), results)


if __name__ == "__main__":
    main()
