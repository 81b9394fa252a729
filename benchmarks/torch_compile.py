"""torch.compile of the slot attention training step: one graph with the fixed-count solve and its backward.

The cpu preset's model (64 px scenes, batch 32, 5 ``Iteration`` steps, ``tol=None``) is trained for a few
steps eagerly and, on an identical copy, with the forward and loss compiled by
``torch.compile(fullgraph=True)`` (inductor). Gradient estimators: ``Neumann(1)`` (the preset's) and
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


def measure(preset: str, estimator, steps: int, backend: str) -> dict:
    from applications.slot_attention.model import reconstruction_loss

    model, images = build(preset)
    model.slot_attention.fixed_point.backward = estimator
    twin = copy.deepcopy(model)

    def loss_of(m):
        def loss(images: torch.Tensor) -> torch.Tensor:
            return reconstruction_loss(m(images), images)
        return loss

    eager_loss, compiled_loss = loss_of(model), None
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    compiled_loss = torch.compile(loss_of(twin), fullgraph=True, backend=backend)
    opt_e, opt_c = torch.optim.Adam(model.parameters(), 1e-3), torch.optim.Adam(twin.parameters(), 1e-3)

    def step(loss_fn, opt) -> float:
        opt.zero_grad(set_to_none=True)
        loss = loss_fn(images)
        loss.backward()
        opt.step()
        return float(loss.detach())

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
        "estimator": str(estimator), "backend": backend, "preset": preset, "batch": int(images.shape[0]),
        # every warning raised while compiling (filter "always"), including DeprecationWarnings that Python's
        # default filters hide from users (torch's inductor imports raise some of those itself)
        "graphs": int(stats["stats"]["unique_graphs"]), "graph_breaks": int(sum(stats["graph_break"].values())),
        "warnings": [f"{w.category.__name__}: {str(w.message)[:160]}" for w in caught],
        "compile_seconds": compile_seconds, "first_loss": {"eager": first_e, "compiled": first_c},
        "final_loss": losses, "seconds_eager": med["eager"], "seconds_compiled": med["compiled"],
        "speedup": med["eager"] / med["compiled"], "steps": steps,
    }


def visible(warnings_: list[str]) -> list[str]:
    """The warnings a user sees under Python's default filters: all but DeprecationWarnings from library code."""
    return [w for w in warnings_ if not w.startswith("DeprecationWarning")]


def run(quick: bool) -> dict:
    torch.set_num_threads(1)
    preset, steps, backend = ("smoke", 2, "aot_eager") if quick else ("cpu", 15, "inductor")
    rows = [{"name": name, **measure(preset, est, steps, backend)} for name, est in ESTIMATORS.items()]
    return {"config": {"quick": quick, "preset": preset, "steps": steps, "backend": backend}, "rows": rows}


def report(results: dict) -> None:
    print_table("torch.compile(fullgraph=True) of the slot attention training step (fixed-count Iteration)",
                ["estimator", "backend", "graphs", "breaks", "warnings (hidden deprecations)", "compile s", "eager s/step", "compiled s/step",
                 "speedup", "loss eager", "loss compiled"],
                [[r["name"], r["backend"], r["graphs"], r["graph_breaks"],
                  f"{len(visible(r['warnings']))} ({len(r['warnings']) - len(visible(r['warnings']))})", r["compile_seconds"],
                  r["seconds_eager"], r["seconds_compiled"], r["speedup"], r["final_loss"]["eager"],
                  r["final_loss"]["compiled"]] for r in results["rows"]])


def main() -> None:
    args = parser(__doc__, RESULTS / "torch_compile.json").parse_args()
    results = run(args.quick)
    report(results)
    write_json(args.json, "torch_compile", results.pop("config"), results)


if __name__ == "__main__":
    main()
