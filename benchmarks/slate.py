"""SLATE at CPU scale: the claims of Chang, Griffiths & Levine (NeurIPS 2022) for vanilla vs implicit slot
attention, measured on runs of `deqkit train slate` (trained separately, one core each through runq).

Parts:

- ``cost``: forward/backward seconds and tensors saved for backward vs slot attention iterations
  (unrolled vs neumann) on one cpu-preset batch, and the image-GPT's (cpu_gpt preset) greedy generation
  with vs without the key/value cache.
  No training; ~1 min.
- ``ceiling``: FG-ARI of perfect masks at token resolution (the best any token-grid mask can score).
- ``figure RUN --name N``: the run's picture on 8 test images into docs/slate_N_test.png.
- ``report RUN ...``: each run's config, time, test-split CE / MSE / dVAE MSE / FG-ARI / mIoU, FID (small
  extractor) of slot reconstructions, and its Jacobian spectral norm over training (from metrics.jsonl);
  runs that differ only in their seed are summarised as mean ± standard deviation, and the difference of
  two such groups is called a difference only when it exceeds the sum of their standard deviations;
  plots of spectral norm vs step into docs/.

``PYTHONPATH=. python benchmarks/slate.py cost|ceiling|report ...``; JSON in benchmarks/results/slate_*.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import beyond_spread, mean_sd, print_table, write_json  # noqa: E402
from deqkit.data import SceneConfig, SceneDataset, render_batch  # noqa: E402
from deqkit.diagnostics import saved_tensor_bytes  # noqa: E402
from deqkit.metrics import fg_ari  # noqa: E402
from deqkit.plots import save_curves  # noqa: E402
from deqkit.train import load_application  # noqa: E402
from deqkit.train.evaluate import evaluate  # noqa: E402
from deqkit.train.restore import restore  # noqa: E402

APP = load_application(ROOT / "applications" / "slate")
RESULTS = ROOT / "benchmarks" / "results"


def part_cost(args: argparse.Namespace) -> dict[str, Any]:
    torch.set_num_threads(1)
    preset = "smoke" if args.quick else "cpu"
    iters_list = (1, 3) if args.quick else (1, 3, 7, 15)
    reps = 1 if args.quick else 3
    cfg = APP.make_config(preset)
    batch = render_batch(cfg.data, "train", range(cfg.train.batch_size))
    rows = []
    for iters in iters_list:
        for backward in ("unrolled", "neumann"):
            torch.manual_seed(0)
            config = APP.make_config(preset, [f"iters={iters}", f"backward={backward}"])
            model = APP.build_model(config)
            fwd, bwd = [], []
            for _ in range(reps + 1):
                start = time.perf_counter()
                loss, saved = saved_tensor_bytes(lambda: APP.loss(model, batch, config)[0])
                mid = time.perf_counter()
                loss.backward()
                fwd.append(mid - start)
                bwd.append(time.perf_counter() - mid)
                model.zero_grad(set_to_none=True)
            with torch.no_grad():
                inputs = model.slot_features(model.dvae(batch["image"])["tokens"].flatten(1))
            sa_saved = saved_tensor_bytes(lambda: model.slot_attention(inputs)[0])[1]
            rows.append({"backward": backward, "iters": iters, "forward_s": statistics.median(fwd[1:]),
                         "backward_s": statistics.median(bwd[1:]), "saved_mb": saved / 2**20,
                         "slot_attention_saved_mb": sa_saved / 2**20})
    print_table(f"SLATE step cost vs iterations (batch {cfg.train.batch_size}, {preset} preset, 1 thread)",
                ["backward", "iters", "forward s", "backward s", "saved MB", "slot attention saved MB"],
                [[r["backward"], r["iters"], r["forward_s"], r["backward_s"], r["saved_mb"],
                  r["slot_attention_saved_mb"]] for r in rows])
    # generation: greedy decoding of all tokens from the slots by the image-GPT, with and without the cache
    cfg = APP.make_config("smoke" if args.quick else "cpu_gpt")
    model = APP.build_model(cfg).eval()
    with torch.no_grad():
        slots = model(batch["image"])["slots"]
    gen = {}
    for use_cache in (True, False):
        times = []
        for _ in range(reps):
            start = time.perf_counter()
            tokens = model.gpt.generate(model.slot_proj(slots), use_cache=use_cache)
            times.append(time.perf_counter() - start)
        gen["cached" if use_cache else "uncached"] = {"seconds": min(times), "tokens": tokens}
    same = bool(torch.equal(gen["cached"]["tokens"], gen["uncached"]["tokens"]))
    generation = {"batch": cfg.train.batch_size, "tokens": model.gpt.num_tokens, "identical_tokens": same,
                  "cached_s": gen["cached"]["seconds"], "uncached_s": gen["uncached"]["seconds"]}
    print_table("greedy generation", ["batch", "tokens", "cached s", "uncached s", "identical tokens"],
                [[generation["batch"], generation["tokens"], generation["cached_s"], generation["uncached_s"], same]])
    if args.plots:
        for key, label in (("backward_s", "backward seconds"), ("slot_attention_saved_mb", "MB saved by slot attention")):
            series = {b: ([r["iters"] for r in rows if r["backward"] == b], [r[key] for r in rows if r["backward"] == b])
                      for b in ("unrolled", "neumann")}
            save_curves(Path(args.plots) / f"slate_{key}_vs_iters.png", series,
                        title=f"SLATE: {label} vs iterations", xlabel="iterations", ylabel=label)
    return {"preset": preset, "rows": rows, "generation": generation}


def token_grid_ceiling(mask: torch.Tensor, patch: int, foreground_vote: bool = True) -> torch.Tensor:
    """FG-ARI ``[B]`` of the best hard masks at token resolution: each ``patch x patch`` cell takes the
    object covering most of its pixels (ignoring the background when ``foreground_vote``), upsampled."""
    onehot = F.one_hot(mask, int(mask.max()) + 1).permute(0, 3, 1, 2).float()
    votes = F.avg_pool2d(onehot, patch)
    if foreground_vote:
        votes[:, 0] = 0  # FG-ARI scores foreground pixels only: a cell's vote goes to its main object
    return fg_ari(mask, F.interpolate(votes, scale_factor=patch, mode="nearest"))


def part_ceiling(args: argparse.Namespace) -> dict[str, Any]:
    n = 64 if args.quick else 1000
    cfg = APP.make_config("cpu")
    rows = []
    for size in (32, 48, 64):
        for colors in ("palette",):
            data = SceneDataset(SceneConfig(**{**cfg.data.__dict__, "image_size": size, "test_size": n}), "test")
            mask = torch.stack([data[i]["mask"] for i in range(n)])
            rows.append({"image_size": size, "grid": size // cfg.patch, "images": n,
                         "fg_vote": token_grid_ceiling(mask, cfg.patch).mean().item(),
                         "any_vote": token_grid_ceiling(mask, cfg.patch, False).mean().item()})
    print_table(f"FG-ARI ceiling of perfect token-grid masks (patch {cfg.patch}, cpu-preset scenes, test split)",
                ["image px", "token grid", "images", "FG-ARI (cell = main object)", "FG-ARI (cell = majority incl. bg)"],
                [[r["image_size"], r["grid"], r["images"], r["fg_vote"], r["any_vote"]] for r in rows])
    return {"rows": rows}


def _records(run: Path) -> list[dict[str, Any]]:
    return [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line.strip()]


def part_report(args: argparse.Namespace) -> dict[str, Any]:
    from applications.slate.fid import slot_fid

    torch.set_num_threads(1)
    runs = {}
    for run in map(Path, args.runs):
        ckpt = run / "checkpoints" / "last.safetensors"
        restored = restore(ckpt)
        cfg = restored.config
        torch.manual_seed(0)
        test = evaluate(restored.app, restored.model, cfg, "test", torch.device("cpu"), limit=args.batches)
        fid = slot_fid(ckpt, split="test", batches=args.batches)
        records = _records(run)
        train_logs = [r for r in records if "solver" in r]
        evals = [r for r in records if "eval" in r]
        runs[run.name] = {
            "backward": cfg.backward, "iters": cfg.iters, "seed": cfg.train.seed, "steps": restored.checkpoint.step,
            "grad_clip": cfg.train.grad_clip, "warmup": cfg.train.warmup, "decay": cfg.train.decay,
            "minutes": max(r.get("time", 0) for r in records) / 60, "test": test, "fid_slots": fid["fid_slots"],
            "fid_dvae": fid["fid_dvae"],
            "spectral_norm": [(r["step"], r["solver"]["slot_attention.fixed_point"].get("spectral_norm"))
                              for r in train_logs if "spectral_norm" in r["solver"]["slot_attention.fixed_point"]],
            "val": [(r["step"], r["eval"]) for r in evals],
        }
    print_table(f"SLATE runs: test split, first {args.batches} batches",
                ["run", "backward", "iters", "clip", "warmup", "steps", "min", "CE/token", "MSE (sum/img)",
                 "dVAE MSE", "FG-ARI", "mIoU", "FID slots (small)", "||J|| last"],
                [[name, r["backward"], r["iters"], r["grad_clip"], r["warmup"], r["steps"], r["minutes"],
                  r["test"]["ce"], r["test"]["mse"], r["test"]["dvae_mse"], r["test"]["fg_ari"], r["test"]["miou"],
                  r["fid_slots"], r["spectral_norm"][-1][1] if r["spectral_norm"] else None]
                 for name, r in runs.items()])
    groups = seed_groups(runs)
    if groups:
        print_table("mean ± sd over seeds (test split)", ["setting", "seeds", *GROUP_METRICS],
                    [[name, len(g["seeds"]), *(f"{g[m]['mean']:.3f} ± {g[m]['sd']:.3f}" for m in GROUP_METRICS)]
                     for name, g in groups.items()])
    if args.plots:
        save_curves(Path(args.plots) / f"slate_{args.name}_spectral_norm.png", spectral_series(runs),
                    title="SLATE: spectral norm of the slot attention step's Jacobian", xlabel="step",
                    ylabel="||J||_2 (power iteration)")
    return {"batches": args.batches, "runs": runs, "seed_groups": groups, "differences": group_differences(groups)}


def spectral_series(runs: dict[str, dict[str, Any]]) -> dict[str, tuple[list[int], list[float]]]:
    """One ‖J‖ curve per setting: the mean over its seeds at each logged step (a run alone keeps its name),
    so a report of many seeds stays a readable plot."""
    def short(members: list[tuple[str, dict[str, Any]]]) -> str:
        first = members[0][1]
        return f"{first['backward']} iters={first['iters']} clip={first['grad_clip']}"

    settings = by_setting(runs)
    shorts = [short(members) for members in settings.values()]
    series = {}
    for setting, members in settings.items():
        curves = [dict((s, v) for s, v in run["spectral_norm"] if v is not None) for _, run in members]
        steps = sorted(set.intersection(*(set(c) for c in curves)))
        name = short(members) if shorts.count(short(members)) == 1 else setting  # the full setting if ambiguous
        label = members[0][0] if len(members) == 1 else f"{name} ({len(members)} seeds)"
        series[label] = (steps, [statistics.fmean(c[s] for c in curves) for s in steps])
    return series


GROUP_METRICS = ("ce", "ce_other_slots", "mse", "fg_ari", "miou", "fid_slots")


def _setting(run: dict[str, Any]) -> str:
    return f"{run['backward']} iters={run['iters']} clip={run['grad_clip']} warmup={run['warmup']} steps={run['steps']}"


def by_setting(runs: dict[str, dict[str, Any]]) -> dict[str, list[tuple[str, dict[str, Any]]]]:
    """``(name, run)`` pairs grouped by setting (everything but the seed), in the order the runs came."""
    groups: dict[str, list[tuple[str, dict[str, Any]]]] = {}
    for name, run in runs.items():
        groups.setdefault(_setting(run), []).append((name, run))
    return groups


def seed_groups(runs: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Runs with the same setting and different seeds: mean and (sample) standard deviation per metric."""
    groups = {}
    for name, named in by_setting(runs).items():
        members = [run for _, run in named]
        if len(members) < 2:
            continue
        group: dict[str, Any] = {"seeds": sorted(r["seed"] for r in members)}
        for metric in GROUP_METRICS:
            values = [r["fid_slots"] if metric == "fid_slots" else r["test"].get(metric) for r in members]
            values = [v for v in values if v is not None]
            if values:
                group[metric] = mean_sd(values)
        groups[name] = group
    return groups


def group_differences(groups: dict[str, dict[str, Any]]) -> list[dict[str, Any]]:
    """unrolled vs neumann for every setting run both ways: the mean difference per metric and whether it
    exceeds the spread (the sum of the two standard deviations); otherwise it is "no difference"."""
    rows = []
    for name, group in groups.items():
        if not name.startswith("unrolled "):
            continue
        other = groups.get("neumann " + name.removeprefix("unrolled "))
        if other is None:
            continue
        for metric in GROUP_METRICS:
            if metric in group and metric in other:
                gap = beyond_spread(group[metric], other[metric])
                rows.append({"setting": name.removeprefix("unrolled "), "metric": metric,
                             "neumann_minus_unrolled": gap["difference"], "spread": gap["spread"],
                             "difference": gap["beyond"]})
    if rows:
        print_table("implicit (neumann) - vanilla (unrolled)",
                    ["setting", "metric", "difference", "spread", "beyond spread"],
                    [[r["setting"], r["metric"], r["neumann_minus_unrolled"], r["spread"], r["difference"]]
                     for r in rows])
    return rows


def part_figure(args: argparse.Namespace) -> dict[str, Any]:
    """The application's picture (input | dVAE | slot reconstruction | masks) of one run on test images."""
    from deqkit.train.data import eval_batches

    (run,) = map(Path, args.runs)
    restored = restore(run / "checkpoints" / "last.safetensors")
    batch = next(iter(eval_batches(restored.app.build_dataset(restored.config, "test"), 8, 1, restored.app.collate)))
    path = Path(args.plots) / f"slate_{args.name}_test.png"
    torch.manual_seed(0)
    with torch.no_grad():
        restored.app.visualize(restored.model.eval(), batch, restored.config, path)
    print(f"wrote {path}")
    return {"run": str(run), "figure": str(path)}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("part", choices=["cost", "ceiling", "report", "figure"])
    p.add_argument("runs", nargs="*", help="run directories (report)")
    p.add_argument("--quick", action="store_true")
    p.add_argument("--batches", type=int, default=8, help="test batches scored per run (report)")
    p.add_argument("--name", default="runs", help="suffix of the report's JSON and plots")
    p.add_argument("--plots", default=str(ROOT / "docs"))
    p.add_argument("--json", type=Path, default=None)
    args = p.parse_args()
    parts = {"cost": part_cost, "ceiling": part_ceiling, "report": part_report, "figure": part_figure}
    results = parts[args.part](args)
    if args.part == "figure":
        return
    suffix = args.name if args.part == "report" else args.part
    write_json(args.json or RESULTS / f"slate_{suffix}.json", "slate", vars(args) | {"json": None}, results,
               code=["applications/slate"])


if __name__ == "__main__":
    main()
