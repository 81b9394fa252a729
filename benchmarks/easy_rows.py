"""Where the time of the easy (tanh) rows goes: evaluations of f, or each library's work around them.

For the tanh problems of ``problems.py`` (64×256), with plain iteration in both libraries (each one's best
solver on these rows) at rel 1e-3 and 1e-5: batched calls of f, wall time (best of interleaved repeats),
the time of those calls alone (calls × the best time of one call of f), and the rest per iteration, the
solver's own work. If both libraries call f equally often, deqkit can only be faster by doing less per
iteration, and the 0.8× target would need its loop to cost less than nothing.

    PYTHONPATH=. python benchmarks/easy_rows.py [--quick]
"""

from __future__ import annotations

import time

import torch


def measure(names: list[str], quick: bool, repeats: int) -> list[dict]:
    from problems import build
    from suite import Counted
    from torchdeq.solver import get_solver

    import deqkit
    from deqkit.solvers import Anderson, Iteration

    rows = []
    for p in build(names, quick):
        f = lambda z, p=p: p.step(z, *p.inputs)  # noqa: E731
        for tol in (1e-3, 1e-5):
            counted = Counted(p.step)
            runs = {
                "deqkit/iteration": lambda s=counted, t=tol: deqkit.fixed_point(
                    s, p.z0, inputs=p.inputs, solver=Iteration(), tol=t, max_iter=200, stop_mode="rel",
                    backward="unrolled"),
                "deqkit/anderson": lambda s=counted, t=tol: deqkit.fixed_point(
                    s, p.z0, inputs=p.inputs, solver=Anderson(), tol=t, max_iter=200, stop_mode="rel",
                    backward="unrolled"),
                "torchdeq/iteration": lambda s=counted, t=tol: get_solver("fixed_point_iter")(
                    lambda z: s(z, *p.inputs), p.z0, max_iter=200, tol=t, stop_mode="rel"),
            }
            calls, best = {}, {}
            with torch.no_grad():
                for name, run in runs.items():
                    counted.calls = 0
                    run()
                    calls[name] = counted.calls
                best = {name: float("inf") for name in runs}
                f_best = float("inf")
                for _ in range(repeats):
                    start = time.perf_counter()
                    f(p.z0)
                    f_best = min(f_best, time.perf_counter() - start)
                    for name, run in runs.items():
                        start = time.perf_counter()
                        run()
                        best[name] = min(best[name], time.perf_counter() - start)
            for name in runs:
                rows.append({"problem": p.name, "tol": tol, "solver": name, "calls": calls[name],
                             "seconds": best[name], "f_seconds": calls[name] * f_best,
                             "other_us_per_call": 1e6 * (best[name] - calls[name] * f_best) / calls[name],
                             "ratio_to_torchdeq_iteration": best[name] / best["torchdeq/iteration"]})
    return rows


def report(rows: list[dict]) -> None:
    from common import print_table

    print_table("easy rows: time in f against time in the solver (best of interleaved repeats)",
                ["problem", "tol", "solver", "calls of f", "seconds", "of which f", "other µs/call",
                 "/ torchdeq iteration"],
                [[r["problem"], f"{r['tol']:g}", r["solver"], r["calls"], r["seconds"], r["f_seconds"],
                  r["other_us_per_call"], r["ratio_to_torchdeq_iteration"]] for r in rows])


def main() -> None:
    from common import RESULTS, parser, write_json

    args = parser(__doc__, RESULTS / "easy_rows.json").parse_args()
    torch.set_num_threads(1)
    names = ["tanh_gaussian_0.9"] if args.quick else [f"tanh_{k}_{n}" for k in ("gaussian", "orthogonal")
                                                       for n in ("0.9", "0.99", "0.999")]
    rows = measure(names, args.quick, 3 if args.quick else 15)
    report(rows)
    write_json(args.json, "easy_rows", {"quick": args.quick, "problems": names}, {"rows": rows})


if __name__ == "__main__":
    main()
