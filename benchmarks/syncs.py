"""Host synchronisations per solve: how often a solver makes the host wait for the device.

On a GPU every ``.item()``, ``bool(tensor)``, ``int(tensor)``, ``.tolist()``, ``nonzero()`` or ``torch.equal``
waits for the queued kernels to finish, so a loop that reads a tensor each iteration cannot run ahead of
the device. ``counting_syncs()`` counts these calls by patching the tensor methods in this process (on any
device; with CUDA, ``torch.cuda.set_sync_debug_mode("warn")`` reports the syncs the driver sees as well).
``measure`` counts them per solve for every deqkit and torchdeq solver, fixed count and to a tolerance.

    PYTHONPATH=. python benchmarks/syncs.py [--quick]
"""

from __future__ import annotations

import contextlib
import warnings
from collections import Counter
from typing import Iterator

import torch

# Tensor methods (and torch functions) whose result is a Python value read from the tensor's data.
METHODS = ("item", "tolist", "__bool__", "__int__", "__float__", "__index__", "nonzero")
FUNCTIONS = ("equal", "nonzero")


@contextlib.contextmanager
def counting_syncs() -> Iterator[Counter]:
    """Count reads of tensor data by the host while the block runs: ``counter[name]``, and ``counter["cuda"]``
    for the synchronisations CUDA's sync debug mode reported (when CUDA is available)."""
    counter: Counter = Counter()
    saved = {("method", n): getattr(torch.Tensor, n) for n in METHODS}
    saved.update({("function", n): getattr(torch, n) for n in FUNCTIONS})

    def counted(name, fn):
        def wrapper(*args, **kwargs):
            counter[name] += 1
            return fn(*args, **kwargs)

        return wrapper

    for (kind, name), fn in saved.items():
        setattr(torch.Tensor if kind == "method" else torch, name, counted(name, fn))
    cuda = torch.cuda.is_available()
    try:
        with warnings.catch_warnings(record=True) as caught:
            if cuda:
                warnings.simplefilter("always")
                torch.cuda.set_sync_debug_mode("warn")
            yield counter
    finally:
        if cuda:
            torch.cuda.set_sync_debug_mode("default")
            counter["cuda"] += sum("synchroniz" in str(w.message) for w in caught)
        for (kind, name), fn in saved.items():
            setattr(torch.Tensor if kind == "method" else torch, name, fn)


def total(counter: Counter) -> int:
    """Synchronisations counted by the patched methods (CUDA's own count kept apart)."""
    return sum(v for k, v in counter.items() if k != "cuda")


def measure(quick: bool) -> list[dict]:
    """Syncs per solve and per iteration for each solver of both libraries on the tanh problem (64×256).

    deqkit: fixed count (``tol=None``), and to rel 1e-5 with ``check_every`` 1, 4 and 8 (time, NFE and
    whether z equals the ``check_every=1`` answer); torchdeq: its solvers at rel 1e-5, and its
    ``simple_fixed_point_iter`` for the fixed count.
    """

    from common import best_seconds, tanh_problem
    from torchdeq.solver import get_solver

    import deqkit
    from deqkit.solvers import Anderson, Broyden, Iteration

    batch, width = (16, 64) if quick else (64, 256)
    p = tanh_problem("gaussian", 0.9, batch, width, seed=3)
    z0 = torch.zeros(batch, width)
    tol, max_iter, fixed = 1e-5, 100, 20
    rows = []

    def timed(fn):
        return best_seconds(fn, 3 if quick else 7)

    for name, make in (("iteration", Iteration), ("anderson", Anderson), ("broyden", Broyden)):
        def fixed_count(solver=make()):
            with torch.no_grad():
                return deqkit.fixed_point(p, z0, solver=solver, backward="unrolled", tol=None, max_iter=fixed)

        with counting_syncs() as c:
            fixed_count()
        rows.append({"library": "deqkit", "solver": name, "mode": f"tol=None, {fixed} steps", "check_every": None,
                     "syncs": total(c), "syncs_per_iteration": total(c) / fixed, "iterations": fixed,
                     "cuda_syncs": c["cuda"]})
        reference = None
        for k in (1, 4, 8):
            def to_tol(solver=make(check_every=k)):
                with torch.no_grad():
                    return deqkit.fixed_point(p, z0, solver=solver, tol=tol, max_iter=max_iter, stop_mode="rel",
                                              backward="unrolled")

            with counting_syncs() as c:
                z, info = to_tol()
            iterations = info.iterations
            if reference is None:
                reference = z
            rows.append({"library": "deqkit", "solver": name, "mode": f"rel {tol:g}", "check_every": k,
                         "syncs": total(c), "syncs_per_iteration": total(c) / iterations, "iterations": iterations,
                         "nfe_max": int(info.nfe.max()), "same_z_as_check_every_1": bool(torch.equal(z, reference)),
                         "seconds": timed(to_tol), "cuda_syncs": c["cuda"]})

    def td(name: str, **kwargs):
        def run():
            with torch.no_grad():
                return get_solver(name)(p, z0, **kwargs)
        return run

    for name in ("fixed_point_iter", "anderson", "broyden"):
        run = td(name, max_iter=max_iter, tol=tol, stop_mode="rel")
        p.calls = 0
        with counting_syncs() as c:
            run()
        rows.append({"library": "torchdeq", "solver": name, "mode": f"rel {tol:g}", "check_every": None,
                     "syncs": total(c), "syncs_per_iteration": total(c) / max(1, p.calls), "iterations": p.calls,
                     "seconds": timed(run), "cuda_syncs": c["cuda"]})
    run = td("simple_fixed_point_iter", max_iter=fixed)
    with counting_syncs() as c:
        get_solver("simple_fixed_point_iter")(lambda z, tau=1.0: p(z), z0, max_iter=fixed)
    rows.append({"library": "torchdeq", "solver": "simple_fixed_point_iter", "mode": f"tol=None, {fixed} steps",
                 "check_every": None, "syncs": total(c), "syncs_per_iteration": total(c) / fixed, "iterations": fixed,
                 "cuda_syncs": c["cuda"]})
    return rows


def report(rows: list[dict]) -> None:
    from common import print_table

    print_table("host synchronisations per solve (patched tensor reads; tanh problem, no_grad)",
                ["library", "solver", "mode", "check_every", "iterations", "syncs", "syncs/iteration", "seconds",
                 "same z"],
                [[r["library"], r["solver"], r["mode"], r["check_every"], r["iterations"], r["syncs"],
                  r["syncs_per_iteration"], r.get("seconds"), r.get("same_z_as_check_every_1")] for r in rows])


def main() -> None:
    from common import RESULTS, parser, write_json

    args = parser(__doc__, RESULTS / "syncs.json").parse_args()
    torch.set_num_threads(1)
    rows = measure(args.quick)
    report(rows)
    write_json(args.json, "syncs", {"quick": args.quick}, {"rows": rows})


if __name__ == "__main__":
    main()
