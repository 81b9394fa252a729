"""Vanilla (unrolled) vs implicit (Neumann) slot attention, and deqkit's module vs lucidrains' package.

Three parts, each optional (``--parts``):

- ``curves``: train the slot attention autoencoder with both gradients on the same data, seeds and step
  budget, without gradient clipping, at 1, 3 and 7 iterations; FG-ARI and MSE on a fixed validation set
  against steps and against training wall time.
- ``backward``: time and memory of the backward pass as the number of iterations grows (1..30). On CPU the
  memory is the bytes of tensors autograd saves for the backward (the activations a backward must keep);
  on CUDA it is also the peak allocated memory.
- ``lucidrains``: one training step of the same autoencoder with deqkit's ``SlotAttention`` and with the
  ``slot-attention`` package's module (``pip install --no-deps slot-attention einops``; skipped if absent).

``--quick`` shrinks everything to about a minute. Numbers go to JSON (``--json``), pictures to ``--plots``.
Run from the repository root: ``PYTHONPATH=. python benchmarks/slot_attention.py --quick``.
"""

from __future__ import annotations

import argparse
import importlib.metadata
import importlib.util
import json
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqkit.data import render_batch
from deqkit.diagnostics import saved_tensor_bytes
from deqkit.plots import save_curves
from deqkit.train import load_application
from deqkit.train.trainer import lr_factor, seed_everything

sys.path[:0] = [str(Path(__file__).parent)]  # common.py
from common import code_paths, merged_provenance  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
APP = load_application(ROOT / "applications" / "slot_attention")
METHODS = {"vanilla": "unrolled", "implicit": "neumann"}


def make_config(quick: bool, sets: list[str] = (), full_size: bool = False) -> Any:
    """The cpu preset's model at 32 px (a training step 52 ms vs 126 ms at 64 px, so the 18 curves
    took 31 minutes on one core); ``full_size``: the cpu preset as it is (64 px); ``quick``: 16 px and
    narrower."""
    base = [] if full_size else ["data.image_size=32", "encoder_downsample=1", "decoder_grid=16"]
    if quick:
        base = ["data.image_size=16", "encoder_downsample=0", "decoder_grid=8", "channels=16", "slot_dim=32",
                "mlp_hidden=64"]
    return APP.make_config("cpu", [*base, *sets])


def evaluate(model: nn.Module, batches: list[dict[str, torch.Tensor]], cfg: Any) -> dict[str, float]:
    model.eval()
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        values = [APP.metrics(model, b, cfg) for b in batches]
    model.train()
    return {k: torch.cat([v[k] for v in values]).float().nanmean().item() for k in ("fg_ari", "mse")}


def train_curve(cfg: Any, steps: int, eval_every: int, eval_batches: list[dict[str, torch.Tensor]]
                ) -> list[dict[str, float]]:
    """Train from scratch; every ``eval_every`` steps record step, training seconds, FG-ARI and MSE."""
    seed_everything(cfg.train.seed)
    model = APP.build_model(cfg)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.train.lr)
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: lr_factor(s, cfg.train))
    order = torch.randperm(cfg.data.train_size, generator=torch.Generator().manual_seed(cfg.train.seed))
    bs, seconds, curve = cfg.train.batch_size, 0.0, []
    for step in range(1, steps + 1):
        idx = order[((step - 1) * bs) % len(order):][:bs].tolist()
        batch = render_batch(cfg.data, "train", idx)
        start = time.perf_counter()
        loss, _ = APP.loss(model, batch, cfg)
        loss.backward()  # no gradient clipping, on purpose
        opt.step()
        opt.zero_grad(set_to_none=True)
        sched.step()
        seconds += time.perf_counter() - start
        if step % eval_every == 0 or step == steps:
            curve.append({"step": step, "time": seconds, "loss": loss.item(),
                          **evaluate(model, eval_batches, cfg)})
    return curve


def part_curves(args: argparse.Namespace) -> dict[str, Any]:
    iters_list = tuple(args.iters or ((1, 3) if args.quick else (1, 3, 7)))
    seeds = range(1 if args.quick else args.seeds)
    steps = 30 if args.quick else args.steps
    eval_every = 10 if args.quick else max(1, steps // 12)
    results: dict[str, Any] = {"steps": steps, "seeds": list(seeds), "image_size": make_config(
        args.quick, full_size=args.full_size).data.image_size, "runs": {}}
    for iters in iters_list:
        for name in args.methods:
            for seed in seeds:
                cfg = make_config(args.quick, [f"iters={iters}", f"backward={METHODS[name]}", f"train.seed={seed}",
                                               f"train.steps={steps}"], args.full_size)
                evals = [render_batch(cfg.data, "val", range(i * 32, (i + 1) * 32))
                         for i in range(1 if args.quick else 4)]
                curve = train_curve(cfg, steps, eval_every, evals)
                results["runs"][f"{name}/T={iters}/seed={seed}"] = curve
                print(f"curves {name} T={iters} seed={seed}: fg_ari {curve[-1]['fg_ari']:.3f} "
                      f"mse {curve[-1]['mse']:.5f} in {curve[-1]['time']:.0f}s", flush=True)
    # Keep the runs already in the JSON that this invocation did not redo (e.g. written by a parallel
    # invocation with other --iters or --methods), read now rather than at the start so both survive.
    path = Path(args.json)
    previous = json.loads(path.read_text()).get("curves", {}) if path.exists() else {}
    if all(previous.get(k) == results[k] for k in ("steps", "seeds", "image_size")):
        kept = sorted(set(previous.get("runs", {})) - set(results["runs"]))
        results["runs"] = {**previous.get("runs", {}), **results["runs"]}
        results["runs_kept_from_earlier"] = kept  # measured by an earlier invocation: the file keeps its date
    done = tuple(sorted(i for i in {_iters_of(k) for k in results["runs"]}  # both gradients, every seed
                        if all(f"{n}/T={i}/seed={s}" in results["runs"] for n in METHODS for s in seeds)))
    print_curve_table(results, done, seeds)
    if args.plots and done:
        plot_curves(results, done, seeds, Path(args.plots), "slot_attention_64px" if args.full_size else "slot_attention")
    return results


def _iters_of(run_key: str) -> int:
    """``"vanilla/T=3/seed=0"`` -> 3."""
    return int(run_key.split("/")[1].removeprefix("T="))


def print_curve_table(results: dict[str, Any], iters_list: tuple[int, ...], seeds: range) -> None:
    """Final FG-ARI and MSE, mean and spread over seeds, per gradient and iteration count."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"slot attention after {results['steps']} steps, no gradient clipping "
                        f"({len(seeds)} seeds: mean ± sd)")
    for column in ("gradient", "iters", "FG-ARI", "MSE", "train s", "implicit / vanilla time"):
        table.add_column(column, justify="right")
    for iters in iters_list:
        finals = {name: [results["runs"][f"{name}/T={iters}/seed={s}"][-1] for s in seeds] for name in METHODS}
        for name, rows in finals.items():
            def stat(key: str, fmt: str) -> str:
                values = [r[key] for r in rows]
                spread = statistics.stdev(values) if len(values) > 1 else 0.0
                return f"{statistics.mean(values):{fmt}} ± {spread:{fmt}}"
            ratio = (statistics.mean(r["time"] for r in finals["implicit"])
                     / statistics.mean(r["time"] for r in finals["vanilla"]))
            table.add_row(name, str(iters), stat("fg_ari", ".3f"), stat("mse", ".5f"),
                          f"{statistics.mean(r['time'] for r in rows):.0f}",
                          f"{ratio:.2f}" if name == "implicit" else "")
    Console().print(table)


def plot_curves(results: dict[str, Any], iters_list: tuple[int, ...], seeds: range, folder: Path,
                prefix: str = "slot_attention") -> None:
    for metric in ("fg_ari", "mse"):
        for axis in ("step", "time"):
            series = {}
            for iters in iters_list:
                for name in METHODS:
                    runs = [results["runs"][f"{name}/T={iters}/seed={s}"] for s in seeds]
                    xs = [statistics.mean(r[i][axis] for r in runs) for i in range(len(runs[0]))]
                    ys = [statistics.mean(r[i][metric] for r in runs) for i in range(len(runs[0]))]
                    series[f"{name} T={iters}"] = (xs, ys)
            save_curves(folder / f"{prefix}_{metric}_vs_{axis}.png", series,
                        title=f"slot attention: {metric.upper()} (mean of {len(seeds)} seeds)",
                        xlabel="training seconds" if axis == "time" else "step", ylabel=metric,
                        logy=metric == "mse")


def part_backward(args: argparse.Namespace) -> dict[str, Any]:
    iters_list = (1, 3, 7) if args.quick else (1, 3, 7, 15, 30)
    reps = 2 if args.quick else 5
    cfg = make_config(args.quick)
    batch = render_batch(cfg.data, "train", range(cfg.train.batch_size))
    rows = []
    for iters in iters_list:
        for name, backward in METHODS.items():
            torch.manual_seed(0)
            model = APP.build_model(make_config(args.quick, [f"iters={iters}", f"backward={backward}"]))
            fwd, bwd = [], []
            for _ in range(reps + 1):
                if torch.cuda.is_available():
                    torch.cuda.reset_peak_memory_stats()
                start = time.perf_counter()
                loss, saved = saved_tensor_bytes(lambda: APP.loss(model, batch, cfg)[0])
                mid = time.perf_counter()
                loss.backward()
                end = time.perf_counter()
                model.zero_grad(set_to_none=True)
                fwd.append(mid - start)
                bwd.append(end - mid)
            sa_saved = saved_tensor_bytes(lambda: model.slot_attention(model.encoder(batch["image"]))[0])[1]
            row = {"method": name, "iters": iters, "forward_s": statistics.median(fwd[1:]),
                   "backward_s": statistics.median(bwd[1:]), "saved_mb": saved / 2**20,
                   "slot_attention_saved_mb": sa_saved / 2**20}
            if torch.cuda.is_available():
                row["cuda_peak_mb"] = torch.cuda.max_memory_allocated() / 2**20
            rows.append(row)
            print(f"backward {name} T={iters}: fwd {row['forward_s'] * 1e3:.0f} ms, bwd "
                  f"{row['backward_s'] * 1e3:.0f} ms, saved {row['saved_mb']:.1f} MB "
                  f"(slot attention {row['slot_attention_saved_mb']:.1f} MB)", flush=True)
    if args.plots:
        folder = Path(args.plots)
        for key, label in (("backward_s", "backward seconds"), ("slot_attention_saved_mb", "MB saved")):
            series = {name: ([r["iters"] for r in rows if r["method"] == name],
                             [r[key] for r in rows if r["method"] == name]) for name in METHODS}
            save_curves(folder / f"slot_attention_{key}_vs_iters.png", series,
                        title=f"slot attention: {label} vs iterations (batch {cfg.train.batch_size})",
                        xlabel="iterations", ylabel=label)
    return {"batch_size": cfg.train.batch_size, "rows": rows}


def load_lucidrains() -> type | None:
    """The ``slot-attention`` package's module, loaded from its file (its __init__ needs ``einx``)."""
    try:  # by distribution, not by module name: this script is itself importable as `slot_attention`
        path = Path(importlib.metadata.distribution("slot-attention").locate_file("slot_attention/slot_attention.py"))
    except importlib.metadata.PackageNotFoundError:
        return None
    module_spec = importlib.util.spec_from_file_location("_lucidrains_slot_attention", path)
    module = importlib.util.module_from_spec(module_spec)
    try:
        module_spec.loader.exec_module(module)
    except ImportError:
        return None
    return module.SlotAttention


class LucidrainsAdapter(nn.Module):
    """lucidrains' ``SlotAttention(num_slots, dim, iters)`` behind deqkit's ``forward(inputs, slots)``."""

    def __init__(self, cls: type, num_slots: int, dim: int, iters: int, mlp_hidden: int):
        super().__init__()
        self.inner = cls(num_slots, dim, iters=iters, hidden_dim=mlp_hidden)

    def forward(self, inputs: torch.Tensor, slots: torch.Tensor | None = None) -> tuple:
        return self.inner(inputs), None, None


def part_lucidrains(args: argparse.Namespace) -> dict[str, Any]:
    cls = load_lucidrains()
    if cls is None:
        print("lucidrains: skipped (pip install --no-deps slot-attention einops)")
        return {"skipped": "slot-attention package not installed"}
    reps = 5 if args.quick else 30
    # lucidrains' module uses one width for inputs and slots, so the encoder width is the slot width here
    cfg = make_config(args.quick, ["channels=64", "decoder_channels=32"] if not args.quick else ["channels=32"])
    batch = render_batch(cfg.data, "train", range(cfg.train.batch_size))
    image = batch["image"]
    models = {}
    for name, backward in (("deqkit implicit", "neumann"), ("deqkit vanilla", "unrolled"), ("lucidrains", None)):
        torch.manual_seed(0)
        model = APP.build_model(make_config(args.quick, [*(["channels=64", "decoder_channels=32"]
                                                           if not args.quick else ["channels=32"]),
                                                         f"backward={backward or 'unrolled'}"]))
        if backward is None:
            model.slot_attention = LucidrainsAdapter(cls, cfg.num_slots, cfg.slot_dim, cfg.iters, cfg.mlp_hidden)
        models[name] = (model, torch.optim.AdamW(model.parameters(), lr=1e-4))
    times: dict[str, list[float]] = {name: [] for name in models}
    module_times: dict[str, list[float]] = {name: [] for name in models}
    for rep in range(reps + 2):
        for name, (model, opt) in models.items():  # interleaved, so load changes hit every variant alike
            start = time.perf_counter()
            loss = (model(image)["recon"] - image).square().mean()
            loss.backward()
            opt.step()
            opt.zero_grad(set_to_none=True)
            step_s = time.perf_counter() - start
            feats = model.encoder(image).detach()
            start = time.perf_counter()
            model.slot_attention(feats)[0].square().mean().backward()
            module_s = time.perf_counter() - start
            model.zero_grad(set_to_none=True)
            if rep >= 2:
                times[name].append(step_s)
                module_times[name].append(module_s)
    out = {name: {"train_step_ms": 1e3 * statistics.median(t), "module_fwd_bwd_ms": 1e3 * statistics.median(m)}
           for (name, t), m in zip(times.items(), module_times.values())}
    for name, row in out.items():
        print(f"lucidrains comparison: {name}: step {row['train_step_ms']:.1f} ms, slot attention fwd+bwd "
              f"{row['module_fwd_bwd_ms']:.1f} ms", flush=True)
    return {"iters": cfg.iters, "batch_size": cfg.train.batch_size, "reps": reps, "results": out}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, about a minute")
    parser.add_argument("--parts", default="curves,backward,lucidrains")
    parser.add_argument("--steps", type=int, default=1500, help="training steps per curve (full mode)")
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--iters", type=lambda t: [int(v) for v in t.split(",")], default=None,
                        help="iteration counts of the curves part (default 1,3,7; quick 1,3); runs of other "
                             "counts already in --json are kept, so e.g. 1,3 and 7 can run in two processes")
    parser.add_argument("--methods", type=lambda t: [v.strip() for v in t.split(",") if v.strip()],
                        default=list(METHODS), help="gradients of the curves part (vanilla,implicit); as "
                        "with --iters, runs already in --json are kept")
    parser.add_argument("--full-size", action="store_true",
                        help="curves part: the cpu preset's model at its own 64 px instead of 32 px")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "slot_attention.json"))
    parser.add_argument("--plots", default=str(ROOT / "docs"), help="folder for PNGs ('' for none)")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    if set(args.methods) - set(METHODS) or not args.methods:
        parser.error(f"--methods: choose from {sorted(METHODS)}, got {args.methods}")
    parts = {"curves": part_curves, "backward": part_backward, "lucidrains": part_lucidrains}
    chosen = [p.strip() for p in args.parts.split(",") if p.strip()]
    unknown = set(chosen) - set(parts)
    if unknown:
        parser.error(f"unknown parts {sorted(unknown)}; choose from {sorted(parts)}")
    meta: dict[str, Any] = {"quick": args.quick, "threads": args.threads, "torch": torch.__version__,
                            "machine": platform.processor() or platform.machine(),
                            "code": code_paths(__file__, "applications/slot_attention")}
    path = Path(args.json)
    own: dict[str, Any] = {}  # the parts this invocation measured
    for name in chosen:
        own[name] = parts[name](args)
        previous = json.loads(path.read_text()) if path.exists() else None  # parts not rerun are kept
        report = {**(previous or {}), **meta, **own}
        # the file is as old as its oldest part: while one (or one curve run) is kept from earlier, it keeps
        # the earlier block
        kept = [p for p in parts if p in report
                and (p not in own or isinstance(own[p], dict) and own[p].get("runs_kept_from_earlier"))]
        report["provenance"] = merged_provenance(previous, kept)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(report, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
