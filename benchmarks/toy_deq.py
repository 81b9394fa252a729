"""The toy DEQ's documented numbers: `cpu` preset training on three seeds, two ablations, and `deqkit diagnose`.

Each run is ``deqkit train examples/toy_deq --preset cpu [--set ...]`` in this process (the same trainer the
command calls), followed for seed 0 by the report of ``deqkit diagnose CHECKPOINT`` (2 batches of the eval
split). Writes benchmarks/results/toy_deq_cpu.json; about 2 minutes on one core.

    PYTHONPATH=. python benchmarks/toy_deq.py
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT / "benchmarks"), str(ROOT)]

from common import RESULTS, print_table, write_json  # noqa: E402

from deqkit.train import load_application  # noqa: E402
from deqkit.train.diagnose import diagnose  # noqa: E402
from deqkit.train.restore import restore  # noqa: E402
from deqkit.train.trainer import train  # noqa: E402

# name -> --set overrides of the cpu preset
RUNS = {
    "seed0": [],
    "seed1": ["train.seed=1"],
    "seed2": ["train.seed=2"],
    "no_weight_decay": ["train.weight_decay=0"],
    "neumann_backward": ["backward=neumann"],
}


def run(name: str, sets: list[str], out: Path, quick: bool) -> dict:
    """One training run: final eval metrics, solver statistics of the last logged step, wall time."""
    toy = load_application(ROOT / "examples" / "toy_deq")
    extra = ["train.steps=40", "train.eval_every=20", "train.ckpt_every=20", "train.image_every=0"] if quick else []
    config = toy.make_config("cpu", [*sets, *extra])
    started = time.perf_counter()
    result = train(toy, config, out / name, preset="cpu")
    solver = result.solver.get("fp", next(iter(result.solver.values()), {}))
    return {"sets": sets, "steps": result.step, "split": result.eval_split, **result.metrics,
            "nfe": solver.get("nfe"), "converged": solver.get("converged"),
            "seconds": time.perf_counter() - started, "checkpoint": str(result.checkpoint)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="40 steps per run (for the tests)")
    p.add_argument("--json", type=Path, default=RESULTS / "toy_deq_cpu.json")
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        runs = {name: run(name, sets, Path(tmp), args.quick) for name, sets in RUNS.items()}
        report = diagnose(restore(runs["seed0"]["checkpoint"]), batches=2)
    for record in runs.values():
        del record["checkpoint"]
    seeds = [runs[f"seed{i}"]["accuracy"] for i in range(3)]
    fp = next(iter(report["fixed_points"].values()))
    diagnosed = {"gradient_cosine": report["gradient_cosine"],
                 "gradient_cosine_per_batch": report["gradient_cosine_per_batch"],
                 "samples": report["samples"], **{k: fp[k] for k in (
                     "nfe", "nfe_max", "converged", "spectral_norm_mean", "spectral_norm_max",
                     "spectral_radius_mean", "spectral_radius_max")}}
    print_table("toy_deq, cpu preset", ["run", "val accuracy", "NFE", "converged", "seconds"],
                [[n, r["accuracy"], r["nfe"], r["converged"], r["seconds"]] for n, r in runs.items()])
    print_table("deqkit diagnose, seed 0", list(diagnosed), [[diagnosed[k] for k in diagnosed]])
    write_json(args.json, "toy_deq", {"preset": "cpu", "quick": args.quick, "runs": RUNS},
               {"runs": runs, "accuracy_seed_mean": sum(seeds) / 3, "diagnose_seed0": diagnosed},
               code=["examples/toy_deq"])


if __name__ == "__main__":
    main()
