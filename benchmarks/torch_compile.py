"""torch.compile of the slot attention training step: one graph with the fixed-count solve and its backward.

The cpu preset's model (64 px scenes, batch 32, 5 ``Iteration`` steps, ``tol=None``) is trained for a few
steps eagerly and, on an identical copy, with the forward and loss compiled by
``torch.compile(fullgraph=True)`` (inductor): the whole model (``region="model"``), or only its slot attention
module, the fixed-count solve, with the convolutional encoder and decoder left to eager
(``region="slot_attention"``). On CUDA the model and images move to the GPU and the compile uses
``mode="reduce-overhead"`` (CUDA graphs: one launch for the whole loop instead of one per kernel); on CPU
inductor's default mode. Gradient estimators: ``Neumann(1)`` (the preset's) and
``IFT(solver="iteration", tol=None, max_iter=5)``. Reported per estimator: graphs and graph breaks that
dynamo counted, warnings raised while compiling, compile time (the first step), median step time of each
(forward, backward and Adam update; eager and compiled steps interleaved) and the loss of both after the
same steps (they must agree to float rounding).

    python -m benchmarks --only compile
    PYTHONPATH=. python benchmarks/torch_compile.py --quick    # the smoke preset, aot_eager backend
"""

from __future__ import annotations

import copy
import statistics
import time
import warnings

import torch
from common import RESULTS, parser, print_table, write_json

from deqkit.backward import IFT, Neumann

ESTIMATORS = {"neumann k=1": Neumann(1), "ift iteration, 5 steps": IFT(solver="iteration", tol=None, max_iter=5)}


def build(preset: str):
    from applications.slot_attention.app import APP, PRESETS  # benchmarks are clients: they may import apps
    from deqkit.data import SceneDataset
    from deqkit.train.config import resolve_config

    config = resolve_config(APP.config_type, overrides=PRESETS[preset])
    torch.manual_seed(0)
    model = APP.build_model(config)
    data = SceneDataset(config.data, "train")
    batch = config.train.batch_size
    images = torch.stack([data[i]["image"] for i in range(batch)])
    return model, images


def measure(preset: str, estimator, steps: int, backend: str, region: str = "model") -> dict:
    from applications.slot_attention.model import reconstruction_loss

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mode = "reduce-overhead" if device == "cuda" and backend == "inductor" else None
    model, images = build(preset)
    model, images = model.to(device), images.to(device)
    model.slot_attention.fixed_point.backward = estimator
    twin = copy.deepcopy(model)

    def loss_of(m):
        def loss(images: torch.Tensor) -> torch.Tensor:
            return reconstruction_loss(m(images), images)
        return loss

    eager_loss, compiled_loss = loss_of(model), None
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    if region == "model":
        compiled_loss = torch.compile(loss_of(twin), fullgraph=True, backend=backend, mode=mode)
    elif region == "slot_attention":
        twin.slot_attention = torch.compile(twin.slot_attention, fullgraph=True, backend=backend, mode=mode)
        compiled_loss = loss_of(twin)
    else:
        raise ValueError(f"unknown region {region!r}; use 'model' or 'slot_attention'")
    opt_e, opt_c = torch.optim.Adam(model.parameters(), 1e-3), torch.optim.Adam(twin.parameters(), 1e-3)

    def step(loss_fn, opt) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(images)
        loss.backward()
        opt.step()
        value = float(loss.detach())  # waits for the device: the step's time is the whole step's
        return value

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        start = time.perf_counter()
        first_c = step(compiled_loss, opt_c)
        compile_seconds = time.perf_counter() - start
    first_e = step(eager_loss, opt_e)
    times = {"eager": [], "compiled": []}
    losses = {}
    for _ in range(steps):
        for label, fn, opt in (("eager", eager_loss, opt_e), ("compiled", compiled_loss, opt_c)):
            start = time.perf_counter()
            losses[label] = step(fn, opt)
            times[label].append(time.perf_counter() - start)
    med = {k: statistics.median(v) for k, v in times.items()}
    stats = torch._dynamo.utils.counters
    return {
        "estimator": str(estimator), "backend": backend, "mode": mode, "device": device, "region": region,
        "preset": preset, "batch": int(images.shape[0]),
        # every warning raised while compiling (filter "always"), including DeprecationWarnings that Python's
        # default filters hide from users (torch's inductor imports raise some of those itself)
        "graphs": int(stats["stats"]["unique_graphs"]), "graph_breaks": int(sum(stats["graph_break"].values())),
        "warnings": [f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught],
        "compile_seconds": compile_seconds, "first_loss": {"eager": first_e, "compiled": first_c},
        "final_loss": losses, "seconds_eager": med["eager"], "seconds_compiled": med["compiled"],
        "speedup": med["eager"] / med["compiled"], "steps": steps,
        "best_seconds_eager": min(times["eager"]), "best_seconds_compiled": min(times["compiled"]),
        "best_speedup": min(times["eager"]) / min(times["compiled"]),
    }


def fixed_count_loop(sizes: tuple[tuple[int, int], ...], n: int, steps: int, backend: str) -> list[dict]:
    """A tanh DEQ's training step, ``fixed_point(Iteration(), Neumann(1), tol=None, max_iter=n)`` and backward,
    eager against ``torch.compile(fullgraph=True)`` (the loop without convolutions around it)."""
    from common import tanh_problem

    import deqkit
    from deqkit.backward import Neumann
    from deqkit.solvers import Iteration

    device = "cuda" if torch.cuda.is_available() else "cpu"
    mode = "reduce-overhead" if device == "cuda" and backend == "inductor" else None
    rows = []
    for batch, width in sizes:
        p = tanh_problem("gaussian", 0.9, batch, width, seed=3)
        W, U, x = p.W.to(device).requires_grad_(), p.U.to(device), p.x.to(device)
        z0 = torch.zeros(batch, width, device=device)

        def loss() -> torch.Tensor:
            z, _ = deqkit.fixed_point(lambda z: torch.tanh(z @ W.T + x @ U.T), z0, solver=Iteration(),
                                      backward=Neumann(1), tol=None, max_iter=n)
            return z.sum()

        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        compiled = torch.compile(loss, fullgraph=True, backend=backend, mode=mode)
        start = time.perf_counter()
        out = compiled()
        out.backward()
        float(out.detach())  # waits for the device
        compile_seconds = time.perf_counter() - start
        times = {"eager": [], "compiled": []}
        for _ in range(steps):
            for label, fn in (("eager", loss), ("compiled", compiled)):
                start = time.perf_counter()
                out = fn()
                out.backward()
                float(out.detach())
                times[label].append(time.perf_counter() - start)
        stats = torch._dynamo.utils.counters
        best = {k: min(v) for k, v in times.items()}
        rows.append({"batch": batch, "width": width, "iterations": n, "backend": backend, "mode": mode,
                     "device": device, "graphs": int(stats["stats"]["unique_graphs"]),
                     "compile_seconds": compile_seconds, "best_seconds": best,
                     "best_speedup": best["eager"] / best["compiled"]})
    return rows


def visible(warnings_: list[str]) -> list[str]:
    """The warnings a user sees under Python's default filters: all but DeprecationWarnings from library code."""
    return [w for w in warnings_ if not w.startswith("DeprecationWarning")]


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    preset, steps, backend = ("smoke", 2, "aot_eager") if quick else ("cpu", 15, "inductor")
    rows = [{"name": f"{name}, {region}", **measure(preset, est, steps, backend, region)}
            for name, est in ESTIMATORS.items() for region in ("model", "slot_attention")]
    loops = fixed_count_loop(((64, 256), (8, 32)), 30, 3 if quick else 15, backend)
    return {"config": {"quick": quick, "preset": preset, "steps": steps, "backend": backend}, "rows": rows,
            "fixed_count_loop": loops}


def report(results: dict) -> None:
    print_table("torch.compile(fullgraph=True) of the slot attention training step (fixed-count Iteration)",
                ["estimator, compiled region", "backend", "graphs", "breaks", "warnings (hidden deprecations)", "compile s",
                 "eager s/step", "compiled s/step", "speedup (median)", "loss eager", "loss compiled"],
                [[r["name"], f"{r['backend']} {r.get('mode') or ''} {r.get('device', 'cpu')}", r["graphs"], r["graph_breaks"],
                  f"{len(visible(r['warnings']))} ({len(r['warnings']) - len(visible(r['warnings']))})", r["compile_seconds"],
                  r["seconds_eager"], r["seconds_compiled"], r["speedup"], r["final_loss"]["eager"],
                  r["final_loss"]["compiled"]] for r in results["rows"]])


def report_loops(results: dict) -> None:
    print_table("torch.compile(fullgraph=True) of a fixed-count tanh DEQ training step (30 steps + Neumann(1), backward)",
                ["B×D", "backend", "graphs", "compile s", "eager s", "compiled s", "speedup (best of interleaved)"],
                [[f"{r['batch']}×{r['width']}", f"{r['backend']} {r['mode'] or ''} {r['device']}", r["graphs"],
                  r["compile_seconds"], r["best_seconds"]["eager"], r["best_seconds"]["compiled"], r["best_speedup"]]
                 for r in results.get("fixed_count_loop", [])])


def main() -> None:
    args = parser(__doc__, RESULTS / "torch_compile.json").parse_args()
    results = run(args.quick)
    report(results)
    report_loops(results)
    write_json(args.json, "torch_compile", results.pop("config"), results)


if __name__ == "__main__":
    main()
