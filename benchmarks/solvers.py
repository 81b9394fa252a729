"""deqkit vs torchdeq forward solvers on the same tanh DEQs, in one process.

f(z) = tanh(z Wᵀ + x Uᵀ), batch 64, width 256, W Gaussian or orthogonal with ‖W‖₂ ∈ {0.9, 0.99}, tolerances
1e-3 and 1e-5 (stop mode abs; rel rows for the Gaussian problems). deqkit's Iteration / Anderson / Broyden
at their defaults against torchdeq's fixed_point_iter / anderson / broyden at theirs, both from z0 = 0 with
the same ``max_iter``. Per row: NFE per sample (torchdeq iterates the whole batch, so each of its samples
costs the batch's count), batched calls of f, median wall time ratio deqkit/torchdeq, the largest final
residual ‖f(z) − z‖ (evaluated here for both) and the fraction of samples within tolerance. Then a mixed
batch (half the samples warm-started next to their fixed point) and the loop overhead of a fixed-count
``fixed_point`` against a bare ``for`` loop.

    PYTHONPATH=. python benchmarks/solvers.py            # full grid, ~1 min on one thread
    PYTHONPATH=. python benchmarks/solvers.py --quick    # one problem, a few seconds
"""

from __future__ import annotations

import statistics
import time

import torch
from common import RESULTS, TanhDEQ, fmt, median_seconds, parser, print_table, tanh_problem, write_json
from torchdeq.solver import get_solver

import deqkit
from deqkit.solvers import Anderson, Broyden, Iteration

PAIRS = {  # row name -> (deqkit solver, torchdeq solver name), each at its library's defaults
    "iteration": (Iteration(), "fixed_point_iter"),
    "anderson": (Anderson(), "anderson"),
    "broyden": (Broyden(), "broyden"),
}


def relative(problem: TanhDEQ, z: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        return problem.residual(z) / torch.linalg.vector_norm(problem(z), dim=1)


def outcome(problem: TanhDEQ, z: torch.Tensor, tol: float, stop_mode: str) -> dict:
    """Final residuals of ``z`` checked here: the largest abs one, and the fraction within ``tol``."""
    calls = problem.calls
    res = problem.residual(z) if stop_mode == "abs" else relative(problem, z)
    problem.calls = calls  # checking does not count as solver work
    return {
        "residual_max": float(problem.residual(z).max()),
        "stop_residual_max": float(res.max()),
        "converged_fraction": float((res <= tol).float().mean()),
    }


def solve_deqkit(problem: TanhDEQ, solver, z0: torch.Tensor, tol: float, stop_mode: str, max_iter: int):
    with torch.no_grad():
        # backward="unrolled" under no_grad: the solve alone, as a call of torchdeq's solver
        return deqkit.fixed_point(problem, z0, solver=solver, tol=tol, max_iter=max_iter, stop_mode=stop_mode,
                                  backward="unrolled")


def solve_torchdeq(problem: TanhDEQ, name: str, z0: torch.Tensor, tol: float, stop_mode: str, max_iter: int):
    with torch.no_grad():
        return get_solver(name)(problem, z0, max_iter=max_iter, tol=tol, stop_mode=stop_mode)


def compare(problem: TanhDEQ, pair: str, z0: torch.Tensor, tol: float, stop_mode: str, max_iter: int, repeats: int) -> dict:
    """One row: both libraries' solvers of kind ``pair`` on the same problem and start."""
    dk_solver, td_name = PAIRS[pair]
    problem.calls = 0
    z, info = solve_deqkit(problem, dk_solver, z0, tol, stop_mode, max_iter)
    dk = {
        "nfe_mean": float(info.nfe.float().mean()),
        "nfe_max": int(info.nfe.max()),
        "calls": problem.calls,
        **outcome(problem, z, tol, stop_mode),
        "nfe_per_sample": info.nfe.tolist(),
    }
    problem.calls = 0
    z_td, _, _ = solve_torchdeq(problem, td_name, z0, tol, stop_mode, max_iter)
    td = {"nfe_mean": float(problem.calls), "nfe_max": problem.calls, "calls": problem.calls, **outcome(problem, z_td, tol, stop_mode)}
    dk["seconds"] = median_seconds(lambda: solve_deqkit(problem, dk_solver, z0, tol, stop_mode, max_iter), repeats)
    td["seconds"] = median_seconds(lambda: solve_torchdeq(problem, td_name, z0, tol, stop_mode, max_iter), repeats)
    return {"solver": pair, "tol": tol, "stop_mode": stop_mode, "deqkit": dk, "torchdeq": td, "time_ratio": dk["seconds"] / td["seconds"]}


def mixed_batch(batch: int, width: int, tol: float, max_iter: int, repeats: int) -> list[dict]:
    """Half the batch starts 1e-3 from its fixed point (easy), half from zero (hard)."""
    problem = tanh_problem("gaussian", 0.9, batch, width, seed=1)
    with torch.no_grad():
        z_star, _ = deqkit.fixed_point(problem, torch.zeros(batch, width), solver="iteration", tol=1e-7, max_iter=500, stop_mode="abs")
    noise = torch.randn(batch, width, generator=torch.Generator().manual_seed(2))
    z0 = torch.zeros(batch, width)
    easy = torch.arange(batch) < batch // 2
    z0[easy] = z_star[easy] + 1e-3 * noise[easy] / torch.linalg.vector_norm(noise[easy], dim=1, keepdim=True)
    rows = []
    for pair in PAIRS:
        row = compare(problem, pair, z0, tol, "abs", max_iter, repeats)
        nfe = torch.tensor(row["deqkit"].pop("nfe_per_sample"), dtype=torch.float)
        row["deqkit"]["nfe_easy_mean"] = float(nfe[easy].mean())
        row["deqkit"]["nfe_hard_mean"] = float(nfe[~easy].mean())
        row["torchdeq"]["nfe_easy_mean"] = row["torchdeq"]["nfe_hard_mean"] = row["torchdeq"]["nfe_mean"]
        rows.append({"problem": "mixed: gaussian ‖W‖=0.9, half warm-started", **row})
    return rows


def loop_overhead(batch: int, width: int, n: int, repeats: int) -> list[dict]:
    """Fixed count ``tol=None`` deqkit Iteration (and torchdeq's loops) against ``for _ in range(n): z = f(z)``.

    Run at the benchmark's size and at a tiny one (8×32) where per-call overhead dominates.
    """
    rows = []
    for b, d in ((batch, width), (8, 32)):
        problem = tanh_problem("gaussian", 0.9, b, d, seed=3)
        z0 = torch.zeros(b, d)

        def bare() -> torch.Tensor:
            with torch.no_grad():
                z = z0
                for _ in range(n):
                    z = problem(z)
            return z

        # backward="unrolled": exactly n evaluations (an implicit estimator adds its own step(s) after the loop)
        def dk() -> torch.Tensor:  # default stop_mode="rel": each step also computes ‖f(z)‖ for the trace
            with torch.no_grad():
                return deqkit.fixed_point(problem, z0, solver=Iteration(), backward="unrolled", tol=None,
                                          max_iter=n)[0]

        def dk_abs() -> torch.Tensor:
            with torch.no_grad():
                return deqkit.fixed_point(problem, z0, solver=Iteration(), backward="unrolled", tol=None,
                                          max_iter=n, stop_mode="abs")[0]

        def dk_read() -> torch.Tensor:  # the same, and the record is read (its trace computed)
            with torch.no_grad():
                z, info = deqkit.fixed_point(problem, z0, solver=Iteration(), backward="unrolled", tol=None,
                                             max_iter=n)
                info.trace
            return z

        def td_simple() -> torch.Tensor:
            with torch.no_grad():
                return get_solver("simple_fixed_point_iter")(lambda z, tau=1.0: problem(z), z0, max_iter=n)[0]

        def td_monitored() -> torch.Tensor:  # tol=0 never stops early: a fixed count with statistics
            with torch.no_grad():
                return get_solver("fixed_point_iter")(problem, z0, max_iter=n, tol=0.0, return_final=True)[0]

        # deqkit's fixed count returns the n-th iterate, exactly as the loop does
        same = bool(torch.equal(bare(), dk()))
        # interleave the timings so that load from other processes hits every variant alike
        fns = {"bare": bare, "deqkit": dk, "deqkit_abs": dk_abs, "deqkit_info_read": dk_read, "torchdeq_simple": td_simple,
               "torchdeq_fixed_point_iter": td_monitored}
        times = {name: [] for name in fns}
        for fn in fns.values():
            fn()
        for _ in range(repeats):
            for name, fn in fns.items():
                start = time.perf_counter()
                fn()
                times[name].append(time.perf_counter() - start)
        # best-of: the intrinsic cost, with interference from other processes removed (medians kept too)
        sec = {k: min(v) for k, v in times.items()}
        median = {k: statistics.median(v) for k, v in times.items()}
        rows.append(
            {
                "batch": b,
                "width": d,
                "iterations": n,
                "same_result_as_loop": same,
                "seconds": sec,
                "median_seconds": median,
                "median_ratio_deqkit_to_loop": median["deqkit"] / median["bare"],
                "us_per_iteration": {k: 1e6 * v / n for k, v in sec.items()},
                "ratio_deqkit_to_loop": sec["deqkit"] / sec["bare"],
                "ratio_deqkit_abs_to_loop": sec["deqkit_abs"] / sec["bare"],
                "ratio_deqkit_info_read_to_loop": sec["deqkit_info_read"] / sec["bare"],
                "ratio_torchdeq_simple_to_loop": sec["torchdeq_simple"] / sec["bare"],
                "ratio_torchdeq_fixed_point_iter_to_loop": sec["torchdeq_fixed_point_iter"] / sec["bare"],
            }
        )
    return rows


def main() -> None:
    args = parser(__doc__, RESULTS / "solvers.json").parse_args()
    torch.set_num_threads(1)
    batch, width, max_iter = 64, 256, 100
    if args.quick:
        grid = [("gaussian", 0.9, 1e-5, "abs")]
        repeats, loop_n = 3, 20
    else:
        grid = [(k, n, t, "abs") for k in ("gaussian", "orthogonal") for n in (0.9, 0.99) for t in (1e-3, 1e-5)]
        grid += [("gaussian", n, t, "rel") for n in (0.9, 0.99) for t in (1e-3, 1e-5)]
        repeats, loop_n = 7, 30

    rows = []
    for kind, norm, tol, stop_mode in grid:
        problem = tanh_problem(kind, norm, batch, width)
        for pair in PAIRS:
            row = compare(problem, pair, torch.zeros(batch, width), tol, stop_mode, max_iter, repeats)
            row["deqkit"].pop("nfe_per_sample")
            rows.append({"problem": f"{kind} ‖W‖={norm}", "kind": kind, "norm": norm, **row})
    mixed = mixed_batch(batch, width, 1e-5, max_iter, repeats)
    overhead = loop_overhead(batch, width, loop_n, 3 * repeats)

    def by(rs, pair):
        return {(r.get("problem"), r["tol"], r["stop_mode"]): r for r in rs if r["solver"] == pair}

    it, aa = by(rows + mixed, "iteration"), by(rows + mixed, "anderson")
    ref = [r for r in rows if r["problem"] == "gaussian ‖W‖=0.9" and r["tol"] == 1e-5 and r["stop_mode"] == "abs"]
    checks = {
        "deqkit_anderson_never_more_nfe_than_iteration": all(
            aa[k]["deqkit"]["nfe_mean"] <= it[k]["deqkit"]["nfe_mean"] and aa[k]["deqkit"]["nfe_max"] <= it[k]["deqkit"]["nfe_max"]
            for k in it
        ),
        "torchdeq_anderson_more_nfe_than_iteration_rows": sum(aa[k]["torchdeq"]["calls"] > it[k]["torchdeq"]["calls"] for k in it),
        "rows": len(it),
        "reference_gaussian_0.9_tol_1e-5": {
            r["solver"]: {"torchdeq_nfe": r["torchdeq"]["calls"], "deqkit_nfe_mean": r["deqkit"]["nfe_mean"], "deqkit_nfe_max": r["deqkit"]["nfe_max"]}
            for r in ref
        },
        "loop_overhead_ratio": overhead[0]["ratio_deqkit_to_loop"],
        "loop_overhead_ok": overhead[0]["ratio_deqkit_to_loop"] <= 1.1,
    }

    table = []
    for r in rows + mixed:
        dk, td = r["deqkit"], r["torchdeq"]
        nfe_dk = f"{dk['nfe_mean']:.1f} / {dk['calls']}"
        if "nfe_easy_mean" in dk:
            nfe_dk += f" (easy {dk['nfe_easy_mean']:.1f}, hard {dk['nfe_hard_mean']:.1f})"
        table.append(
            [r["problem"], f"{r['tol']:g} {r['stop_mode']}", r["solver"], nfe_dk, td["calls"], r["time_ratio"],
             dk["stop_residual_max"], td["stop_residual_max"], dk["converged_fraction"], td["converged_fraction"]]
        )
    print_table(
        f"deqkit vs torchdeq {torch.__version__}: B={batch}, D={width}, max_iter={max_iter}, z0=0, 1 thread "
        "(residual ‖f(z)−z‖, or /‖f(z)‖ in rel rows, evaluated here)",
        ["problem", "tol", "solver", "deqkit NFE/sample / calls", "torchdeq NFE", "time dk/td",
         "dk max residual", "td max residual", "dk conv", "td conv"],
        table,
    )
    print_table(
        f"loop overhead, fixed count tol=None (best of {3 * repeats})",
        ["B×D", "n", "µs/iter loop", "µs/iter deqkit", "deqkit/loop", "deqkit abs/loop", "deqkit info read/loop", "torchdeq simple/loop",
         "torchdeq fp_iter/loop", "same z"],
        [[f"{o['batch']}×{o['width']}", o["iterations"], o["us_per_iteration"]["bare"], o["us_per_iteration"]["deqkit"],
          o["ratio_deqkit_to_loop"], o["ratio_deqkit_abs_to_loop"], o["ratio_deqkit_info_read_to_loop"], o["ratio_torchdeq_simple_to_loop"],
          o["ratio_torchdeq_fixed_point_iter_to_loop"],
          o["same_result_as_loop"]] for o in overhead],
    )
    print("checks:", {k: (fmt(v) if not isinstance(v, dict) else v) for k, v in checks.items()})
    config = {"batch": batch, "width": width, "max_iter": max_iter, "repeats": repeats, "quick": args.quick, "z0": "zeros"}
    write_json(args.json, "solvers", config, {"rows": rows, "mixed": mixed, "loop_overhead": overhead, "checks": checks})


if __name__ == "__main__":
    main()
