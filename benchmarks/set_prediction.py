"""Implicit vs unrolled set prediction: slot attention on object properties, DSPN/iDSPN on random sets.

Parts (``--parts``, each optional):

- ``curves``: read the ``metrics.jsonl`` of finished ``deqkit train applications/set_prediction`` runs
  (``--runs DIR...``, one per task x gradient x seed; the commands are in docs/set_prediction.md) and put
  their validation metric against steps and against training wall time side by side.
- ``backward``: no training; forward+backward time and the bytes autograd saves for the backward of one
  training batch as the number of inner iterations grows (10, 20, 40), for each task's model and for
  ``unrolled``, ``neumann`` and ``ift``.
- ``cosine``: at the checkpoints of the runs, the cosine between each cheap gradient (Neumann(1), and
  unrolled through the iterations as trained) and the exact IFT gradient of the training loss w.r.t. all
  parameters, on two validation batches.

``--quick`` shrinks ``backward`` to tiny models (used by the tests). Run from the repository root:
``python benchmarks/set_prediction.py --parts backward``.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path
from typing import Any

import torch

sys.path[:0] = [str(Path(__file__).parent), str(Path(__file__).resolve().parents[1])]  # common.py; this deqkit
from common import RESULTS, merged_provenance, print_table, write_json  # noqa: E402

from deqkit.backward import IFT, Neumann  # noqa: E402
from deqkit.diagnostics import saved_tensor_bytes  # noqa: E402
from deqkit.plots import save_curves  # noqa: E402
from deqkit.train import load_application  # noqa: E402
from deqkit.train.data import eval_batches  # noqa: E402
from deqkit.train.monitor import fixed_points  # noqa: E402
from deqkit.train.restore import restore  # noqa: E402
from deqkit.train.run_dir import read_metrics  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = load_application(ROOT / "applications" / "set_prediction")
DOCS = ROOT / "docs"
METRIC = {"properties": "ap_inf", "random_sets": "baseline_ratio"}


def _label(config: dict[str, Any]) -> str:
    task = config["task"]
    name = (f"sets {config['sets']['set_size']}x{config['sets']['dim']}" if task == "random_sets"
            else f"properties {config['decoder']}")
    return f"{name} {config['backward']} {config['train']['steps']} steps seed{config['train']['seed']}"


def curves(runs: list[Path]) -> dict[str, Any]:
    """Per run: the eval records (step, seconds, metrics) and the final values."""
    out: dict[str, Any] = {}
    for run in runs:
        config = json.loads((run / "config.json").read_text())["config"]
        records = [r for r in read_metrics(run / "metrics.jsonl") if "eval" in r]
        out[_label(config)] = {
            "run": str(run), "task": config["task"], "backward": config["backward"], "iters": config["iters"],
            "seed": config["train"]["seed"],
            "points": [{"step": r["step"], "seconds": r.get("time"), **{k: v for k, v in r["eval"].items()
                                                                       if isinstance(v, (int, float))}}
                       for r in records],
        }
    rows = []
    for label, run in out.items():
        last = run["points"][-1] if run["points"] else {}
        metric = METRIC[run["task"]]
        rows.append([label, last.get("step"), last.get("seconds"), last.get(metric), last.get("ap_0.125")])
    print_table("validation metric at the end of each run", ["run", "step", "seconds", "ap_inf / ratio", "ap_0.125"],
                rows)
    for task, metric in METRIC.items():
        for axis in ("step", "seconds"):
            series = {label: ([p[axis] for p in r["points"]], [p.get(metric, math.nan) for p in r["points"]])
                      for label, r in out.items() if r["task"] == task}
            if series:
                save_curves(DOCS / f"set_prediction_{task}_{axis}.png", series,
                            title=f"{task}: validation {metric}", xlabel=axis if axis == "step" else "training seconds",
                            ylabel=metric)
    return out


def _model_and_batch(task: str, iters: int, backward: str, quick: bool) -> tuple[Any, Any, Any]:
    preset = {"properties": "cpu", "random_sets": "cpu_sets_8x8"}[task]
    sets = [f"iters={iters}", f"backward={backward}"]
    if quick:
        sets += ["latent=16", "set_hidden=16", "channels=8", "slot_dim=16", "mlp_hidden=16", "train.batch_size=4"]
    cfg = APP.make_config(preset, sets)
    torch.manual_seed(0)
    model = APP.build_model(cfg)
    batch = next(iter(eval_batches(APP.build_dataset(cfg, "train"), cfg.train.batch_size, 1, APP.collate)))
    return cfg, model, batch


def backward_costs(quick: bool, repeats: int) -> list[dict[str, Any]]:
    """Forward+backward seconds (median of ``repeats``) and saved-tensor bytes per (task, gradient, iters)."""
    rows = []
    for task in ("properties", "random_sets"):
        for iters in (10, 20, 40):
            for backward in ("unrolled", "neumann", "ift"):
                cfg, model, batch = _model_and_batch(task, iters, backward, quick)
                times, saved = [], 0
                for r in range(repeats + 1):
                    model.zero_grad(set_to_none=True)
                    start = time.perf_counter()
                    loss, saved = saved_tensor_bytes(lambda: APP.loss(model, batch, cfg)[0])
                    mid = time.perf_counter()
                    loss.backward()
                    end = time.perf_counter()
                    if r:  # the first one warms up
                        times.append((mid - start, end - mid))
                times.sort(key=sum)
                fwd, bwd = times[len(times) // 2]
                rows.append({"task": task, "iters": iters, "backward": backward, "forward_s": fwd, "backward_s": bwd,
                             "saved_mb": saved / 2**20, "batch": cfg.train.batch_size})
    print_table("forward/backward cost vs inner iterations (one training batch)",
                ["task", "iters", "gradient", "forward s", "backward s", "saved MB"],
                [[r["task"], r["iters"], r["backward"], r["forward_s"], r["backward_s"], r["saved_mb"]] for r in rows])
    return rows


def _grads(restored: Any, batch: Any, params: list[torch.Tensor]) -> torch.Tensor:
    restored.model.zero_grad(set_to_none=True)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(0)
        loss, _ = restored.app.loss(restored.model, batch, restored.config)
        loss.backward()
    flat = torch.cat([(p.grad if p.grad is not None else torch.zeros_like(p)).reshape(-1).double() for p in params])
    restored.model.zero_grad(set_to_none=True)
    return flat


def cosines(runs: list[Path], batches: int) -> list[dict[str, Any]]:
    """cos(Neumann(1), IFT) and cos(unrolled, IFT) of the training loss at each kept checkpoint of each run."""
    rows = []
    for run in runs:
        config = json.loads((run / "config.json").read_text())["config"]
        for ckpt in sorted((run / "checkpoints").glob("step_*.safetensors")):
            restored = restore(ckpt)
            model, cfg = restored.model, restored.config
            model.train()  # the training loss as trained (iters, not test_iters)
            params = [p for p in model.parameters() if p.requires_grad]
            fps = [fp for _, fp in fixed_points(model)]
            loader = eval_batches(APP.build_dataset(cfg, "val"), cfg.train.batch_size, batches, APP.collate)
            values: dict[str, list[float]] = {"neumann": [], "unrolled": []}
            for batch in loader:
                grads = {}
                for name, estimator in (("ift", IFT()), ("neumann", Neumann(1)), ("unrolled", "unrolled")):
                    for fp in fps:
                        fp.backward = estimator
                    grads[name] = _grads(restored, batch, params)
                for name in values:
                    denom = grads[name].norm() * grads["ift"].norm()
                    values[name].append(float(grads[name] @ grads["ift"] / denom) if denom > 0 else math.nan)
            rows.append({"run": _label(config), "step": restored.checkpoint.step,
                         "cos_neumann_ift": sum(values["neumann"]) / len(values["neumann"]),
                         "cos_unrolled_ift": sum(values["unrolled"]) / len(values["unrolled"])})
    print_table("gradient cosine against exact IFT at checkpoints", ["run", "step", "Neumann(1)", "unrolled"],
                [[r["run"], r["step"], r["cos_neumann_ift"], r["cos_unrolled_ift"]] for r in rows])
    return rows


def main() -> None:
    p = argparse.ArgumentParser(description=(__doc__ or "").split("\n")[0])
    p.add_argument("--parts", nargs="+", default=["curves", "backward", "cosine"],
                   choices=["curves", "backward", "cosine"])
    p.add_argument("--runs", nargs="*", type=Path, default=[], help="run directories of deqkit train")
    p.add_argument("--quick", action="store_true", help="tiny models (used by the tests)")
    p.add_argument("--repeats", type=int, default=3)
    p.add_argument("--cosine-batches", type=int, default=2)
    p.add_argument("--json", type=Path, default=RESULTS / "set_prediction.json")
    args = p.parse_args()
    torch.set_num_threads(1)
    results: dict[str, Any] = {}
    previous = json.loads(args.json.read_text()) if args.json.exists() else None
    if previous is not None:  # parts run separately accumulate in one file
        results = previous.get("results", {})
    kept = [part for part in results if part not in args.parts]
    if "curves" in args.parts:
        results["curves"] = curves(args.runs)
    if "backward" in args.parts:
        results["backward"] = backward_costs(args.quick, 1 if args.quick else args.repeats)
    if "cosine" in args.parts:
        results["cosine"] = cosines(args.runs, args.cosine_batches)
    write_json(args.json, "set_prediction", {"parts": args.parts, "quick": args.quick,
                                             "runs": [str(r) for r in args.runs]}, results,
               code=["applications/set_prediction"], provenance_block=merged_provenance(previous, kept))


if __name__ == "__main__":
    main()
