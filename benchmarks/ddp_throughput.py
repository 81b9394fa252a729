"""Steps/s of ``torchrun --nproc-per-node N -m deqkit train`` for several source trees, interleaved.

Compares two versions of deqkit's data parallelism on a shared machine: each round runs every tree once,
in turn, so load from other processes hits all of them alike. The rate is measured from metrics.jsonl
between the first log line and the last (start-up, evaluation and checkpoints excluded).

    python benchmarks/ddp_throughput.py --tree before=/tmp/old_checkout --tree after=. \\
        --app examples/toy_deq --preset smoke --set train.steps=300 --rounds 3 --json results/x.json
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

QUIET = ["train.eval_every=0", "train.ckpt_every=0", "train.image_every=0", "train.spectral_iters=0",
         "train.eval_batches=1", "train.log_every=25"]


def run_once(tree: Path, app: str, preset: str, sets: list[str], nproc: int) -> float:
    """Steady-state steps/s of one training run with ``tree`` first on the import path."""
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "run"
        command = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}",
                   "-m", "deqkit", "train", app, "--preset", preset, "--out", str(out), "-q"]
        for item in QUIET + sets:
            command += ["--set", item]
        env = dict(os.environ, PYTHONPATH=str(tree.resolve()), OMP_NUM_THREADS="1")
        subprocess.run(command, env=env, check=True, capture_output=True, cwd=tree)
        records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
        timed = [r for r in records if "loss" in r]
        first, last = timed[0], timed[-1]
        return (last["step"] - first["step"]) / (last["time"] - first["time"])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tree", action="append", required=True, metavar="NAME=PATH")
    parser.add_argument("--app", required=True)
    parser.add_argument("--preset", default="smoke")
    parser.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    parser.add_argument("--nproc", type=int, default=2)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", type=Path)
    args = parser.parse_args()
    trees = dict(item.split("=", 1) for item in args.tree)
    rates: dict[str, list[float]] = {name: [] for name in trees}
    started = time.time()
    for round_ in range(args.rounds):
        for name, path in trees.items():
            rates[name].append(run_once(Path(path), args.app, args.preset, args.sets, args.nproc))
            print(f"round {round_ + 1} {name}: {rates[name][-1]:.2f} steps/s", flush=True)
    load = os.getloadavg()
    summary = {name: {"median_steps_per_s": round(statistics.median(r), 3), "runs": [round(x, 3) for x in r]}
               for name, r in rates.items()}
    result = {"what": f"torchrun --standalone --nproc-per-node {args.nproc} -m deqkit train {args.app} --preset "
                      f"{args.preset} " + " ".join(f"--set {s}" for s in QUIET + args.sets),
              "trees": trees, "rounds": args.rounds, "interleaved": True, "results": summary,
              "load_average_at_end": [round(x, 2) for x in load], "minutes": round((time.time() - started) / 60, 1)}
    print(json.dumps(result, indent=1))
    if args.json:
        args.json.write_text(json.dumps(result, indent=1) + "\n")


if __name__ == "__main__":
    main()
