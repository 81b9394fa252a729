"""Every deqkit solver and torchdeq's on the seeded fixed points of ``problems.py``, plus compaction and loop overhead.

Per problem and tolerance (relative, 1e-3 and 1e-5): NFE (deqkit: mean per sample and batched calls;
torchdeq iterates the whole batch, so its NFE is its number of calls), wall time (median of interleaved
repeats, all six solvers in turn), the fraction of samples whose relative residual ‖f(z) − z‖/‖f(z)‖ —
evaluated here, the same way for both libraries — is ≤ 1e-3 and ≤ 1e-5, and residual quantiles. deqkit
gets the step's per-sample inputs (``fixed_point(step, z0, inputs=...)``), so converged samples stop
costing evaluations. Then ``compaction``: the same solves with and without ``inputs`` on a mixed batch
(half the samples warm-started at their fixed point) and on one where no sample stops early; and
``loop_overhead`` (``solvers.loop_overhead``): ``tol=None`` against a bare loop.

    python -m benchmarks --only suite          # full, a few minutes on one core
    PYTHONPATH=. python benchmarks/suite.py --quick
"""

from __future__ import annotations

import statistics
import time
from typing import Callable

import torch
from common import RESULTS, parser, print_table, write_json
from problems import Problem, build
from torchdeq.solver import get_solver

import deqkit
from deqkit.solvers import Anderson, Broyden, Iteration

PAIRS = {"iteration": (Iteration(), "fixed_point_iter"), "anderson": (Anderson(), "anderson"), "broyden": (Broyden(), "broyden")}
TOLS = (1e-3, 1e-5)


class Counted:
    """Counts batched calls of a problem's step (and the rows it was evaluated on)."""

    def __init__(self, step: Callable):
        self.step, self.calls, self.rows = step, 0, 0

    def __call__(self, z: torch.Tensor, *inputs) -> torch.Tensor:
        self.calls += 1
        self.rows += z.shape[0]
        return self.step(z, *inputs)


def solvers_for(p: Problem, tol: float, max_iter: int) -> dict[str, Callable[[], tuple[torch.Tensor, object]]]:
    """Zero-argument solves, keyed ``deqkit/<kind>`` and ``torchdeq/<kind>``, each from the problem's z0."""
    runs = {}
    for kind, (dk_solver, td_name) in PAIRS.items():
        def dk(solver=dk_solver, step=p.step):
            with torch.no_grad():
                # backward="unrolled" under no_grad: the solve alone (an implicit estimator would add its own
                # step from z*, which a call of torchdeq's solver does not take)
                return deqkit.fixed_point(step, p.z0, inputs=p.inputs, solver=solver, tol=tol, max_iter=max_iter,
                                          stop_mode="rel", backward="unrolled")

        def td(name=td_name, step=p.step):
            with torch.no_grad():
                z, _, info = get_solver(name)(lambda z: step(z, *p.inputs), p.z0, max_iter=max_iter, tol=tol,
                                             stop_mode="rel")
            return z, info

        runs[f"deqkit/{kind}"], runs[f"torchdeq/{kind}"] = dk, td
    return runs


def quantiles(res: torch.Tensor) -> dict:
    finite = res[torch.isfinite(res)].double()
    q = torch.quantile(finite, torch.tensor([0.5, 0.9], dtype=torch.float64)) if finite.numel() else [float("nan")] * 2
    return {"median": float(q[0]), "p90": float(q[1]), "max": float(res.double().max()),
            "nonfinite": int((~torch.isfinite(res)).sum())}


def measure(p: Problem, tol: float, max_iter: int, repeats: int) -> list[dict]:
    """One row per solver: what it reached and what it cost, timings interleaved across the six solvers."""
    rows = {}
    for name in solvers_for(p, tol, max_iter):
        counted = Counted(p.step)
        runs = solvers_for(Problem(p.name, counted, p.z0, p.inputs, p.description), tol, max_iter)
        z, info = runs[name]()
        res = p.relative_residual(z)
        row = {"problem": p.name, "tol": tol, "library": name.split("/")[0], "solver": name.split("/")[1],
               "calls": counted.calls, "row_evaluations": counted.rows,
               "converged_1e-3": float((res <= 1e-3).float().mean()),
               "converged_1e-5": float((res <= 1e-5).float().mean()),
               "converged_tol": float((res <= tol).float().mean()), "residual": quantiles(res)}
        if isinstance(info, deqkit.SolveInfo):
            row["nfe_mean"], row["nfe_max"] = float(info.nfe.float().mean()), int(info.nfe.max())
            row["diverged"] = float(info.diverged.float().mean())
        else:
            row["nfe_mean"] = row["nfe_max"] = counted.calls
        rows[name] = row
    runs = solvers_for(p, tol, max_iter)
    times = {name: [] for name in runs}
    for _ in range(repeats):
        for name, run in runs.items():
            start = time.perf_counter()
            run()
            times[name].append(time.perf_counter() - start)
    for name, row in rows.items():
        row["seconds"] = statistics.median(times[name])
        row["seconds_all"] = times[name]
    return list(rows.values())


def best(rows: list[dict], library: str) -> dict:
    """A library's best solver on one problem and tolerance: most samples within tol, then least time."""
    mine = [r for r in rows if r["library"] == library]
    return min(mine, key=lambda r: (-r["converged_tol"], r["seconds"]))


def verdicts(rows: list[dict]) -> list[dict]:
    """Per problem and tolerance: deqkit's best against torchdeq's best (the issue's 'as many samples, ≤ 0.8× time')."""
    out = []
    for key in dict.fromkeys((r["problem"], r["tol"]) for r in rows):
        group = [r for r in rows if (r["problem"], r["tol"]) == key]
        dk, td = best(group, "deqkit"), best(group, "torchdeq")
        ratio = dk["seconds"] / td["seconds"]
        out.append({"problem": key[0], "tol": key[1], "deqkit_best": dk["solver"], "torchdeq_best": td["solver"],
                    "deqkit_converged": dk["converged_tol"], "torchdeq_converged": td["converged_tol"],
                    "time_ratio": ratio, "as_many_samples": dk["converged_tol"] >= td["converged_tol"],
                    "time_ok": ratio <= 0.8, "met": dk["converged_tol"] >= td["converged_tol"] and ratio <= 0.8})
    return out


def compaction(quick: bool, repeats: int) -> list[dict]:
    """Wall time with ``inputs=`` (compacted) over the closure (whole batch), same solver, same answer."""
    out = []
    for name in ("tanh_gaussian_0.9",) if quick else ("tanh_gaussian_0.9", "slot_attention_init"):
        p = build([name], quick)[0]
        with torch.no_grad():
            z_star, _ = deqkit.fixed_point(p.step, p.z0, inputs=p.inputs, solver="anderson", tol=1e-7, max_iter=300)
        half = torch.arange(p.z0.shape[0]) % 2 == 0
        for case, z0 in (("mixed", torch.where(half[:, None], z_star, p.z0)), ("no_early_stop", p.z0)):
            for kind, (solver, _) in PAIRS.items():
                tol = 1e-5

                def closed(z0=z0, solver=solver):
                    with torch.no_grad():
                        return deqkit.fixed_point(p.f, z0, solver=solver, tol=tol, max_iter=200, backward="unrolled")

                def compacted(z0=z0, solver=solver):
                    with torch.no_grad():
                        return deqkit.fixed_point(p.step, z0, inputs=p.inputs, solver=solver, tol=tol, max_iter=200,
                                                  backward="unrolled")

                (za, ia), (zb, ib) = closed(), compacted()
                identical = torch.equal(za, zb) and torch.equal(ia.nfe, ib.nfe) and torch.equal(ia.trace, ib.trace)
                times = {"closed": [], "compacted": []}
                for _ in range(repeats):
                    for label, fn in (("closed", closed), ("compacted", compacted)):
                        start = time.perf_counter()
                        fn()
                        times[label].append(time.perf_counter() - start)
                # best of the interleaved repeats: the intrinsic cost, with load from other processes removed
                # (medians kept too)
                med = {k: statistics.median(v) for k, v in times.items()}
                best_of = {k: min(v) for k, v in times.items()}
                out.append({"problem": name, "case": case, "solver": kind, "identical": identical,
                            "nfe_max": int(ib.nfe.max()), "nfe_mean": float(ib.nfe.float().mean()),
                            "seconds_closed": best_of["closed"], "seconds_compacted": best_of["compacted"],
                            "ratio": best_of["compacted"] / best_of["closed"],
                            "median_ratio": med["compacted"] / med["closed"]})
    return out


QUICK_PROBLEMS = ["tanh_gaussian_0.9", "sinkhorn_log"]


def run(quick: bool, names: list[str] | None = None, extras: bool = True) -> dict:
    """Solver rows for ``names`` (default: all problems); ``extras`` adds the compaction and loop-overhead runs."""
    torch.set_num_threads(1)
    max_iter, repeats = (40, 1) if quick else (200, 5)
    problems = build(names or (QUICK_PROBLEMS if quick else None), quick)
    rows = []
    for p in problems:
        for tol in TOLS:
            rows += measure(p, tol, max_iter, repeats)
    from solvers import loop_overhead

    return {"config": {"quick": quick, "max_iter": max_iter, "repeats": repeats, "tols": TOLS, "stop_mode": "rel",
                       "problems": {p.name: p.description for p in problems}},
            "rows": rows, "verdicts": verdicts(rows),
            "compaction": compaction(quick, 3 if quick else 9) if extras else [],
            "loop_overhead": loop_overhead(64, 256, 10 if quick else 30, 3 if quick else 21) if extras else []}


def report(results: dict) -> None:
    table = []
    for r in results["rows"]:
        table.append([r["problem"], f"{r['tol']:g}", f"{r['library']}/{r['solver']}", f"{r['nfe_mean']:.1f}", r["calls"],
                      r["seconds"], r["converged_1e-3"], r["converged_1e-5"], r["residual"]["median"], r["residual"]["max"]])
    print_table("fixed-point suite (relative residual evaluated here; time = median of interleaved repeats)",
                ["problem", "tol", "solver", "NFE/sample", "calls", "seconds", "≤1e-3", "≤1e-5", "median res", "max res"], table)
    print_table("best solver per library (most samples within tol, then fastest)",
                ["problem", "tol", "deqkit best", "torchdeq best", "dk conv", "td conv", "time dk/td", "met"],
                [[v["problem"], f"{v['tol']:g}", v["deqkit_best"], v["torchdeq_best"], v["deqkit_converged"],
                  v["torchdeq_converged"], v["time_ratio"], v["met"]] for v in results["verdicts"]])
    print_table("compaction: fixed_point(step, inputs=...) over the closure (same solver; best of interleaved repeats; "
                "'identical' = torch.equal)",
                ["problem", "case", "solver", "NFE max", "closed s", "compacted s", "ratio", "identical"],
                [[c["problem"], c["case"], c["solver"], c["nfe_max"], c["seconds_closed"], c["seconds_compacted"],
                  c["ratio"], c["identical"]] for c in results["compaction"]])


def main() -> None:
    p = parser(__doc__, RESULTS / "suite.json")
    p.add_argument("--problems", help="comma-separated problem names (then no compaction/loop-overhead runs)")
    args = p.parse_args()
    names = args.problems.split(",") if args.problems else None
    results = run(args.quick, names, extras=names is None)
    report(results)
    write_json(args.json, "suite", results.pop("config"), results)


if __name__ == "__main__":
    main()
