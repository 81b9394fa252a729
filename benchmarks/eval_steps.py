"""What evaluating an implicit model with or without its gradient estimator's step changes (issue 20 §4).

An implicit fixed point trained with ``Neumann(1)`` and ``iters=T`` applies its update T + 1 times in
training (T without a graph, one with). deqkit's evaluation now does the same; before, evaluation under
``no_grad`` stopped after T updates. Scoring the same checkpoint with ``--set backward=unrolled`` runs exactly
T updates under ``no_grad``, i.e. the old evaluation, so both numbers come from the current code.

``PYTHONPATH=. python benchmarks/eval_steps.py [--checkpoint CK] [--batches N]``; JSON in ``--json``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

import torch
from rich.console import Console
from rich.table import Table

from benchmarks.common import fmt, write_json
from deqkit.train.evaluate import evaluate
from deqkit.train.restore import restore

ROOT = Path(__file__).resolve().parents[1]
CHECKPOINT = ROOT / "benchmarks" / "data" / "slot_attention_cpu_2000steps.safetensors"


def score(checkpoint: Path, backward: str, batches: int | None) -> dict[str, float]:
    """The checkpoint's test metrics with its fixed point's ``backward`` set to ``backward``."""
    restored = restore(checkpoint, "cpu", [f"backward={backward}"])
    return evaluate(restored.app, restored.model, restored.config, "test", torch.device("cpu"), limit=batches)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--checkpoint", type=Path, default=CHECKPOINT)
    parser.add_argument("--batches", type=int, default=None, help="score only the first N test batches")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "eval_steps.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    trained = restore(args.checkpoint, "cpu").config
    rows = {"as trained (neumann: T + 1 updates)": score(args.checkpoint, trained.backward, args.batches),
            "before the fix (T updates)": score(args.checkpoint, "unrolled", args.batches)}
    table = Table(title=f"{args.checkpoint.name}: test split, iters T = {trained.iters}", title_justify="left")
    metrics = list(next(iter(rows.values())))
    table.add_column("evaluation")
    for name in metrics:
        table.add_column(name, justify="right")
    for label, values in rows.items():
        table.add_row(label, *(fmt(values[m]) for m in metrics))
    Console().print(table)
    config = {"checkpoint": str(args.checkpoint.relative_to(ROOT)) if args.checkpoint.is_relative_to(ROOT)
              else str(args.checkpoint), "iters": trained.iters, "backward": trained.backward,
              "batches": args.batches}
    write_json(args.json, "eval_steps", config, {"trained": rows["as trained (neumann: T + 1 updates)"],
                                                 "before_fix": rows["before the fix (T updates)"]},
               code=["applications/slot_attention"])


if __name__ == "__main__":
    main()
