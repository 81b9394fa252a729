"""deqkit's hot path against the same loop written by hand: fixed-count solves and a slot attention training step.

``loop_overhead`` (``solvers.loop_overhead``): ``tol=None`` under ``no_grad`` against the bare loop, the
same n evaluations, with 61 interleaved repeats.

``training_loop``: one training step of a tanh DEQ (64×256 and 8×32) with T = 30 updates and a gradient
through one more: ``fixed_point(..., solver=Iteration(), backward=Neumann(1), tol=None, max_iter=T)`` against
T updates under ``no_grad`` and one update with gradient from the detached result, as in Chang et al.'s
Figure 2 (both evaluate f T + 1 times), forward and backward.

``compaction_floor``: a mixed batch solved whole, compacted, and as the running samples alone.
``slot_attention_step``: the slot attention cpu preset's autoencoder (64 px scenes, batch 32, 5 iterations,
learned queries), one Adam step, with deqkit's ``SlotAttention`` (a ``FixedPoint``, ``Neumann(1)``) against
the same module's step run in the Figure-2 loop written here (5 updates under ``no_grad``, one from the
detached slots, the queries' straight-through gradient as deqkit's). Both start from the same weights;
the losses must agree. Timings are interleaved (the two variants in turn) and best-of, so that load from
other processes on the machine hits both alike.

    PYTHONPATH=. python benchmarks/hot_path.py [--quick]
"""

from __future__ import annotations

import copy
import statistics
import time
from typing import Callable

import torch


def interleaved(fns: dict[str, Callable[[], object]], repeats: int) -> dict[str, list[float]]:
    """Wall times of each function, run in turn ``repeats`` times after one warm-up round."""
    for fn in fns.values():
        fn()
    times: dict[str, list[float]] = {name: [] for name in fns}
    for _ in range(repeats):
        for name, fn in fns.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return times


def training_loop(sizes: tuple[tuple[int, int], ...], n: int, repeats: int) -> list[dict]:
    """Forward + backward of a fixed-count Neumann(1) solve against the hand-written Figure-2 loop."""
    from common import tanh_problem

    import deqkit
    from deqkit.backward import Neumann
    from deqkit.solvers import Iteration

    rows = []
    for batch, width in sizes:
        p = tanh_problem("gaussian", 0.9, batch, width, seed=3)
        p.W.requires_grad_()
        z0 = torch.zeros(batch, width)

        def by_hand() -> torch.Tensor:
            with torch.no_grad():
                z = z0
                for _ in range(n):
                    z = p(z)
            z = p(z.detach())
            z.sum().backward()
            return z

        def with_deqkit() -> torch.Tensor:
            z, _ = deqkit.fixed_point(p, z0, solver=Iteration(), backward=Neumann(1), tol=None, max_iter=n)
            z.sum().backward()
            return z

        same = bool(torch.equal(by_hand(), with_deqkit()))
        times = interleaved({"by_hand": by_hand, "deqkit": with_deqkit}, repeats)
        best = {k: min(v) for k, v in times.items()}
        median = {k: statistics.median(v) for k, v in times.items()}
        rows.append({"batch": batch, "width": width, "iterations": n, "same_result": same, "seconds": best,
                     "median_seconds": median, "ratio": best["deqkit"] / best["by_hand"],
                     "median_ratio": median["deqkit"] / median["by_hand"]})
    return rows


def figure2_forward(model, images: torch.Tensor, iters: int) -> torch.Tensor:
    """The autoencoder's loss with its slot attention run as Chang et al.'s Figure 2: ``iters`` updates
    without a graph, one from the detached slots (the module's own layers and step, no FixedPoint)."""
    from applications.slot_attention.model import alpha_composite

    sa = model.slot_attention
    inputs = sa.norm_inputs(model.encoder(images))
    k, v = sa.to_k(inputs), sa.to_v(inputs)
    slots0 = sa.initial_slots(inputs.shape[0])
    with torch.no_grad():
        slots = slots0
        for _ in range(iters):
            slots = sa.step(slots, k, v)
    slots = sa.step(slots.detach(), k, v)
    slots = slots + (slots0 - slots0.detach())  # the learned queries' straight-through gradient, as deqkit's
    rgb, alpha = model.decoder(slots)
    recon, _ = alpha_composite(rgb, alpha)
    return torch.nn.functional.mse_loss(recon, images)


def slot_attention_step(preset: str, repeats: int) -> dict:
    """One Adam step of the autoencoder: deqkit's SlotAttention (Neumann(1)) against the Figure-2 loop."""
    from applications.slot_attention.model import reconstruction_loss
    from torch_compile import build

    model, images = build(preset)
    if model.relative or model.slot_attention.init != "learned":
        raise ValueError(f"preset {preset!r}: the hand-written loop covers absolute decoders with learned queries")
    iters = model.slot_attention.fixed_point.max_iter
    twin = copy.deepcopy(model)
    opt_dk, opt_hand = torch.optim.Adam(model.parameters(), 1e-3), torch.optim.Adam(twin.parameters(), 1e-3)
    losses: dict[str, list[float]] = {"deqkit": [], "by_hand": []}

    def step(loss_fn, opt, label):
        def run() -> None:
            opt.zero_grad(set_to_none=True)
            loss = loss_fn()
            loss.backward()
            opt.step()
            losses[label].append(float(loss.detach()))
        return run

    fns = {"deqkit": step(lambda: reconstruction_loss(model(images), images), opt_dk, "deqkit"),
           "by_hand": step(lambda: figure2_forward(twin, images, iters), opt_hand, "by_hand")}
    times = interleaved(fns, repeats)
    best = {k: min(v) for k, v in times.items()}
    median = {k: statistics.median(v) for k, v in times.items()}
    return {"preset": preset, "batch": int(images.shape[0]), "iterations": iters, "steps": repeats + 1,
            "seconds": best, "median_seconds": median, "ratio": best["deqkit"] / best["by_hand"],
            "median_ratio": median["deqkit"] / median["by_hand"],
            "losses_deqkit": losses["deqkit"], "losses_by_hand": losses["by_hand"],
            "max_loss_difference": max(abs(a - b) for a, b in zip(losses["deqkit"], losses["by_hand"]))}


def compaction_floor(quick: bool, repeats: int) -> dict:
    """Where a compacted solve's time goes: the mixed tanh batch of ``suite.compaction`` (every second sample
    at its fixed point) with ``Iteration``, whole batch (closed over inputs) and compacted, against a solve of
    the running samples alone (the floor compaction can reach)."""
    from problems import build

    import deqkit
    from deqkit.solvers import Iteration

    p = build(["tanh_gaussian_0.9"], quick)[0]
    with torch.no_grad():
        z_star, _ = deqkit.fixed_point(p.step, p.z0, inputs=p.inputs, solver="anderson", tol=1e-7, max_iter=300)
    hard = torch.arange(p.z0.shape[0]) % 2 == 1
    z0 = torch.where(hard[:, None], p.z0, z_star)
    part = tuple(x[hard] if isinstance(x, torch.Tensor) else x for x in p.inputs)
    options = {"solver": Iteration(), "tol": 1e-5, "max_iter": 200, "backward": "unrolled"}

    def solve(step, z, inputs=None):
        def run():
            with torch.no_grad():
                return deqkit.fixed_point(step, z, inputs=inputs, **options)
        return run

    fns = {"whole_batch": solve(p.f, z0), "compacted": solve(p.step, z0, p.inputs),
           "running_samples_alone": solve(p.step, z0[hard], part)}
    best = {k: min(v) for k, v in interleaved(fns, repeats).items()}
    return {"problem": p.name, "batch": int(z0.shape[0]), "running": int(hard.sum()), "seconds": best,
            "ratio_compacted": best["compacted"] / best["whole_batch"],
            "ratio_floor": best["running_samples_alone"] / best["whole_batch"]}


def run(quick: bool) -> dict:
    from solvers import loop_overhead

    torch.set_num_threads(1)
    sizes = ((64, 256), (8, 32))
    return {"config": {"quick": quick, "sizes": sizes},
            # no_grad, tol=None, n steps against the bare loop (and torchdeq's loops); many cheap repeats, best-of
            "loop_overhead": loop_overhead(64, 256, 10 if quick else 30, 3 if quick else 61),
            "training_loop": training_loop(sizes, 10 if quick else 30, 3 if quick else 31),
            "slot_attention": slot_attention_step("smoke" if quick else "cpu", 2 if quick else 15),
            "compaction_floor": compaction_floor(quick, 3 if quick else 31)}


def report(results: dict) -> None:
    from common import print_table

    print_table("training step with a Neumann(1) gradient: deqkit against the hand-written Figure-2 loop "
                "(T no-grad updates + 1 with gradient, forward + backward; best of interleaved repeats)",
                ["B×D / model", "T", "by hand s", "deqkit s", "deqkit / by hand", "median ratio", "same result"],
                [[f"{r['batch']}×{r['width']}", r["iterations"], r["seconds"]["by_hand"], r["seconds"]["deqkit"],
                  r["ratio"], r["median_ratio"], r["same_result"]] for r in results["training_loop"]]
                + [[f"slot attention autoencoder ({results['slot_attention']['preset']}, Adam step)",
                    results["slot_attention"]["iterations"], results["slot_attention"]["seconds"]["by_hand"],
                    results["slot_attention"]["seconds"]["deqkit"], results["slot_attention"]["ratio"],
                    results["slot_attention"]["median_ratio"],
                    f"loss Δ {results['slot_attention']['max_loss_difference']:.1e}"]])
    c = results["compaction_floor"]
    print_table(f"compaction of a mixed batch ({c['problem']}, {c['running']} of {c['batch']} samples running): "
                "best of interleaved repeats",
                ["whole batch s", "compacted s", "running samples alone s", "compacted / whole",
                 "alone / whole (floor)"],
                [[c["seconds"]["whole_batch"], c["seconds"]["compacted"], c["seconds"]["running_samples_alone"],
                  c["ratio_compacted"], c["ratio_floor"]]])


def main() -> None:
    import sys
    from pathlib import Path

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent))  # applications/
    from common import RESULTS, parser, write_json

    args = parser(__doc__, RESULTS / "hot_path.json").parse_args()
    results = run(args.quick)
    report(results)
    write_json(args.json, "hot_path", results.pop("config"), results)


if __name__ == "__main__":
    main()
