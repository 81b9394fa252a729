"""Score finished ``deqkit train`` run directories on a split and keep their training record in one results file.

A documented test metric comes from two commands: ``deqkit train`` (which wrote the weights, at the commit in
the run's ``config.json``) and the scoring (this script, at the current commit). The results file holds both
provenances, the validation curve from ``metrics.jsonl`` and the test metrics of ``checkpoints/last.safetensors``
(also with each ``--variant`` of ``--set`` overrides, e.g. more iterations at test time), and the mean ± sd
over the seeds of each configuration (runs named ``NAME_sK`` or ``NAME-sK``)::

    PYTHONPATH=. python benchmarks/score_runs.py runs/sa runs/sa_s1 --json benchmarks/results/NAME.json \\
        [--variant iters10:iters=10] [--split test] [--batches N]
"""

from __future__ import annotations

import argparse
import json
import re
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import mean_sd, print_table, write_json
from deqkit.train.evaluate import evaluate
from deqkit.train.restore import restore

ROOT = Path(__file__).resolve().parents[1]


def training_record(run: Path) -> dict[str, Any]:
    """What the run directory says about its training: app, preset, provenance, config, wall time, val curve."""
    meta = json.loads((run / "config.json").read_text())
    lines = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]
    curve = [{"step": r["step"], "minutes": round(r["time"] / 60, 2), **r["eval"]} for r in lines if "eval" in r]
    return {"app": meta["app"], "preset": meta.get("preset"), "provenance": meta.get("provenance"),
            "config": meta["config"], "steps": lines[-1]["step"] if lines else 0,
            "train_minutes": round(lines[-1]["time"] / 60, 2) if lines else None, "val_curve": curve}


def score(run: Path, split: str, sets: list[str], batches: int | None) -> dict[str, float]:
    """Metrics of the run's last checkpoint on ``split`` with the config overrides ``sets``."""
    restored = restore(run / "checkpoints" / "last.safetensors", "cpu", sets)
    return evaluate(restored.app, restored.model, restored.config, split, torch.device("cpu"), limit=batches)


def seed_groups(names: Any) -> dict[str, list[str]]:
    """Run names grouped by what precedes a seed suffix (``IN_s0``, ``IN_s1`` → ``IN``; ``neumann-s2`` →
    ``neumann``); a name without one is its own group."""
    groups: dict[str, list[str]] = {}
    for name in names:
        groups.setdefault(re.sub(r"[_-]s\d+$", "", name), []).append(name)
    return groups


def scored_metrics(records: Any, common: bool = False) -> list[str]:
    """The metric names of the runs' as-trained scores in first-seen order: all of them, or with ``common``
    only those every run has (runs of different applications or presets report different metrics)."""
    scores = [r["scores"]["as_trained"] for r in records]
    names = list(dict.fromkeys(m for s in scores for m in s if m != "samples"))
    return [m for m in names if all(m in s for s in scores)] if common else names


def summarise(runs: dict[str, Any], members: list[str], variants: list[str]) -> dict[str, dict[str, Any]]:
    """Mean ± sd over ``members`` of each metric they all report, per variant."""
    metrics = scored_metrics([runs[m] for m in members], common=True)
    return {name: {m: mean_sd([runs[run]["scores"][name][m] for run in members]) for m in metrics}
            for name in variants}


def parse_variant(text: str) -> tuple[str, list[str]]:
    """``name:key=value,key=value`` → (name, [key=value, ...])."""
    name, _, sets = text.partition(":")
    if not name or not sets:
        raise SystemExit(f"error: --variant wants NAME:KEY=VALUE[,KEY=VALUE], got {text!r}")
    return name, sets.split(",")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories written by deqkit train")
    parser.add_argument("--json", type=Path, required=True, help="results file to write")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batches", type=int, default=None, help="score only the first N batches")
    parser.add_argument("--variant", action="append", default=[], type=parse_variant,
                        help="also score with config overrides, NAME:KEY=VALUE[,KEY=VALUE] (repeatable)")
    args = parser.parse_args()
    torch.set_num_threads(1)
    variants = [("as_trained", []), *args.variant]
    runs: dict[str, Any] = {}
    for run in args.runs:
        record = training_record(run)
        record["scores"] = {name: score(run, args.split, sets, args.batches) for name, sets in variants}
        runs[run.name] = record
    metrics = scored_metrics(runs.values())
    summary = summarise(runs, list(runs), [name for name, _ in variants])
    groups = {group: summarise(runs, members, [name for name, _ in variants])
              for group, members in seed_groups(runs).items()}
    print_table(f"{args.split} split", ["run", "variant", *metrics],
                [[run, name, *(r["scores"][name].get(m, "-") for m in metrics)] for run, r in runs.items() for name, _ in variants])
    apps = sorted({r["app"] for r in runs.values()})
    write_json(args.json, "score_runs", {"split": args.split, "batches": args.batches,
                                         "variants": dict(variants), "runs": [str(r) for r in args.runs]},
               {"runs": runs, "summary": summary, "groups": groups}, code=[f"applications/{app}" for app in apps])


if __name__ == "__main__":
    main()
