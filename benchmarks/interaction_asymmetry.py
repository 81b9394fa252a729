"""Interaction-asymmetry Transformer VAE vs implicit and vanilla slot attention on the same scenes.

Scores finished training runs (each trained by the CLI, ``python -m deqkit train ...``; the commands are in
docs/interaction_asymmetry.md) on the same test images: FG-ARI of the models' masks (decoder attention for
the VAE, alpha masks for slot attention), J-ARI and JIS from each decoder's Jacobian, MSE, and the cost of
the forward-mode Jacobian, checked on one image against central differences in float64. Writes a rich
table, a JSON and a side-by-side picture. ``--screening DIR...`` instead summarises short screening runs of
the VAE into one JSON record.

Run from the repository root:
``PYTHONPATH=. python benchmarks/interaction_asymmetry.py --runs ia=runs/ia implicit=runs/sa-implicit
vanilla=runs/sa-vanilla``
"""

from __future__ import annotations

import argparse
import copy
import json
import platform
import resource
import time
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch
from PIL import Image, ImageDraw
from rich.console import Console
from rich.table import Table

from benchmarks.common import mean_sd
from benchmarks.score_runs import seed_groups
from deqkit.data import render_batch
from deqkit.metrics import (fg_ari, jacobian_ari, jacobian_interaction_score, jacobian_masks,
                            reconstruction_mse, slot_jacobian_norms)
from deqkit.nn import alpha_composite
from deqkit.provenance import provenance
from deqkit.train.restore import restore

ROOT = Path(__file__).resolve().parents[1]
RESULTS = ROOT / "benchmarks" / "results"
PALETTE = np.array([[0, 0, 0], [230, 25, 75], [60, 180, 75], [255, 225, 25], [0, 130, 200], [245, 130, 48],
                    [145, 30, 180], [70, 240, 240], [240, 50, 230], [210, 245, 60]], dtype=np.uint8)


def last_record(run: Path) -> dict[str, Any]:
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    return {"steps": records[-1]["step"], "train_seconds": records[-1]["time"], "records": records}


def decoder_of(app: str, model: torch.nn.Module) -> Callable[[torch.Tensor], torch.Tensor]:
    """latents -> image through ``model``'s decoder, for either application."""
    if app == "interaction_asymmetry":
        return lambda z: model.decoder(z)[0]
    if getattr(model, "relative", False):
        raise SystemExit("error: slot attention with relative decoder positions is not supported here")
    return lambda s: alpha_composite(*model.decoder(s))[0]


def model_parts(restored: Any, image: torch.Tensor) -> tuple[dict[str, torch.Tensor], Callable, torch.Tensor]:
    """(outputs with recon and masks, decode: latents -> image, the latents) for either application."""
    decode = decoder_of(restored.app.name, restored.model)
    out = restored.model(image)
    return out, decode, out["z"] if restored.app.name == "interaction_asymmetry" else out["slots"]


def finite_difference_norms(restored: Any, latents: torch.Tensor, eps: float = 1e-7) -> torch.Tensor:
    """``[K,*spatial]`` Jacobian norms of one image's decoder by central differences on a float64 copy of the
    model: an oracle that shares no code with the forward-mode norms. (Reverse mode, ``torch.func.jacrev``,
    took 46 s and 24 GB for one 32x32 image of the VAE, at any chunk size.) A step of 1e-7: the VAE's decoder
    has kinks within 1e-5 of its latents (steps of 1e-4 / 1e-5 / 1e-7 moved the result by 6e-3 / 5e-4 / 7e-8)."""
    decode = decoder_of(restored.app.name, copy.deepcopy(restored.model).double())
    z = latents[:1].detach().double()
    k, s = z.shape[1:]
    columns = []
    with torch.no_grad():
        for i in range(k * s):
            step = torch.zeros(k * s, dtype=z.dtype).index_fill_(0, torch.tensor([i]), eps).view_as(z)
            columns.append((decode(z + step) - decode(z - step))[0] / (2 * eps))  # [C,*spatial]
    jacobian = torch.stack(columns).reshape(k, s, *columns[0].shape)  # [K,S,C,*spatial]
    return jacobian.square().sum((1, 2)).sqrt().float()


def score(restored: Any, data: Any, images: int, jacobian_images: int, batch: int) -> dict[str, Any]:
    fg, mse, masks, truths = [], [], [], []
    with torch.no_grad():
        for start in range(0, images, batch):
            b = render_batch(data, "test", list(range(start, min(images, start + batch))))
            out, _, _ = model_parts(restored, b["image"])
            fg.append(fg_ari(b["mask"], out["masks"].float()))
            mse.append(reconstruction_mse(b["image"], out["recon"].float()))
            masks.append(out["masks"].float().mean(0))
            truths.append(b["mask"])
    # the same partition for every image: the argmax of the model's masks averaged over the test images. A
    # model whose slots are fixed regions of the image scores about as well with it as with its own masks.
    truths = torch.cat(truths)
    fixed = torch.stack(masks).mean(0).argmax(0).expand_as(truths)
    fixed_fg = fg_ari(truths, fixed)
    with torch.no_grad():
        b = render_batch(data, "test", list(range(jacobian_images)))
        out, decode, latents = model_parts(restored, b["image"])
        started = time.perf_counter()
        # one image at a time: 32 directions of all 16 images at once held the decoder's activations of
        # 512 images and took more than 23 GB on the VAE
        norms = torch.cat([slot_jacobian_norms(decode, latents[i:i + 1], chunk_size=32)
                           for i in range(latents.shape[0])])
        forward_s = (time.perf_counter() - started) / jacobian_images
    started = time.perf_counter()
    oracle = finite_difference_norms(restored, latents)
    oracle_s = time.perf_counter() - started
    agree = torch.allclose(norms[0], oracle, rtol=1e-3, atol=1e-5)
    difference = ((norms[0] - oracle).abs().max() / oracle.abs().max()).item()  # relative to the largest norm
    fg, mse = torch.cat(fg), torch.cat(mse)
    return {
        "fg_ari": fg.mean().item(), "fg_ari_std": fg.std().item(), "mse": mse.mean().item(),
        "fixed_partition_fg_ari": fixed_fg.mean().item(),
        "j_ari": jacobian_ari(b["mask"], norms).mean().item(), "jis": jacobian_interaction_score(norms).mean().item(),
        "jis_foreground": jacobian_interaction_score(norms, b["mask"] != 0).mean().item(),
        "images": images, "jacobian_images": jacobian_images, "latent_directions": latents.shape[1] * latents.shape[2],
        "jacobian_forward_s_per_image": forward_s, "finite_difference_s_per_image": oracle_s,
        "finite_difference_agrees": bool(agree), "finite_difference_max_difference": difference,
        "_pictures": (b, out, norms),
    }


def segmentation_tile(labels: torch.Tensor) -> np.ndarray:
    return PALETTE[labels.numpy() % len(PALETTE)]


def save_picture(path: Path, names: list[str], results: dict[str, dict[str, Any]], rows: int, scale: int = 4) -> None:
    """Per row: input, true objects; per model: reconstruction, mask argmax, Jacobian argmax."""
    b = next(iter(results.values()))["_pictures"][0]
    columns = ["input", "objects"]
    tiles: list[list[np.ndarray]] = [[] for _ in range(rows)]
    for r in range(rows):
        tiles[r].append((b["image"][r].clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
        tiles[r].append(segmentation_tile(b["mask"][r]))
    for name in names:
        _, out, norms = results[name]["_pictures"]
        columns += [f"{name} recon", f"{name} masks", f"{name} Jacobian"]
        for r in range(rows):
            tiles[r].append((out["recon"][r].float().clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8))
            tiles[r].append(segmentation_tile(out["masks"][r].argmax(0) + 1))
            tiles[r].append(segmentation_tile(jacobian_masks(norms)[r].argmax(0) + 1))
    h, w = tiles[0][0].shape[:2]
    th, tw, pad, header = h * scale, w * scale, 4, 28
    canvas = Image.new("RGB", (len(columns) * (tw + pad) + pad, header + rows * (th + pad) + pad), "white")
    draw = ImageDraw.Draw(canvas)
    for c, title in enumerate(columns):
        x = pad + c * (tw + pad)
        for i, part in enumerate(title.split(" ", 1)):
            draw.text((x, 2 + 12 * i), part, fill="black")
        for r in range(rows):
            tile = Image.fromarray(tiles[r][c]).resize((tw, th), Image.NEAREST)
            canvas.paste(tile, (x, header + pad + r * (th + pad)))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


GROUP_METRICS = ("fg_ari", "fixed_partition_fg_ari", "j_ari", "jis", "mse")


def seed_group_stats(results: dict[str, dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Mean ± sd of each metric over the seeds of a configuration (runs named NAME, NAME-s1, NAME-s2, ...);
    a configuration with one run has no spread and is left out."""
    return {group: {"runs": names, **{m: mean_sd([results[n][m] for n in names]) for m in GROUP_METRICS}}
            for group, names in seed_groups(results).items() if len(names) > 1}


def compare(args: argparse.Namespace) -> None:
    runs = dict(item.split("=", 1) for item in args.runs)
    restored = {name: restore(Path(d) / "checkpoints" / "last.safetensors") for name, d in runs.items()}
    data = [r.config.data for r in restored.values()]
    if any(d != data[0] for d in data):
        raise SystemExit("error: the runs were trained on different data configs; compare like with like")
    results: dict[str, dict[str, Any]] = {}
    for name, r in restored.items():
        r.model.eval()
        results[name] = score(r, data[0], args.images, args.jacobian_images, args.batch)
        run = last_record(Path(runs[name]))
        results[name].update(app=r.app.name, run=runs[name], trained_by=r.checkpoint.provenance,
                             steps=run["steps"], train_seconds=run["train_seconds"],
                             gradient=getattr(r.config, "backward", None), num_slots=r.config.num_slots)
    table = Table(title=f"test split, {args.images} images (J-ARI/JIS on {args.jacobian_images})")
    for col in ("model", "steps", "train min", "FG-ARI", "fixed FG-ARI", "J-ARI", "JIS", "MSE", "Jac fwd s/img",
                "FD s/img", "FD diff"):
        table.add_column(col)
    for name, m in results.items():
        table.add_row(name, str(m["steps"]), f"{m['train_seconds'] / 60:.1f}", f"{m['fg_ari']:.3f}",
                      f"{m['fixed_partition_fg_ari']:.3f}", f"{m['j_ari']:.3f}",
                      f"{m['jis']:.3f}", f"{m['mse']:.4f}", f"{m['jacobian_forward_s_per_image']:.2f}",
                      f"{m['finite_difference_s_per_image']:.2f}", f"{m['finite_difference_max_difference']:.1e}")
    Console(width=150).print(table)
    save_picture(Path(args.plot), list(results), results, rows=min(6, args.jacobian_images))
    payload = {"machine": platform.processor() or platform.machine(), "torch": torch.__version__,
               "threads": torch.get_num_threads(), "data": str(data[0]), "provenance": provenance(),
               "max_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,  # Linux: KiB
               "code": ["applications/interaction_asymmetry", "applications/slot_attention",
                        "benchmarks/interaction_asymmetry.py", "deqkit"],
               "results": {n: {k: v for k, v in m.items() if not k.startswith("_")} for n, m in results.items()},
               "groups": seed_group_stats(results)}
    Path(args.json).write_text(json.dumps(payload, indent=2) + "\n")
    print(f"wrote {args.json} and {args.plot}")


def screening(args: argparse.Namespace) -> None:
    """One record of the VAE's screening runs: the settings that differ from the cpu preset and the outcome."""
    from deqkit.train import load_application

    app = load_application(ROOT / "applications" / "interaction_asymmetry")
    base = json.loads(json.dumps(app.make_config("cpu"), default=lambda o: o.__dict__))
    attempts = []
    for d in args.screening:
        cfg = json.loads((Path(d) / "config.json").read_text())["config"]
        diff = {}
        for key, value in cfg.items():
            if isinstance(value, dict):
                diff.update({f"{key}.{k}": v for k, v in value.items() if base[key].get(k) != v})
            elif base.get(key) != value:
                diff[key] = value
        run = last_record(Path(d))
        logs = [r["metrics"] for r in run["records"] if "metrics" in r]
        final = next(r["eval"] for r in reversed(run["records"]) if "eval" in r)
        attempts.append({"run": Path(d).name, "changes_from_cpu_preset": diff, "steps": run["steps"],
                         "train_seconds": run["train_seconds"],
                         "attn_max_first_last": [logs[0]["attn_max"], logs[-1]["attn_max"]],
                         "train_mse_first_last": [logs[0]["mse"], logs[-1]["mse"]],
                         "val": {k: final[k] for k in ("fg_ari", "j_ari", "jis", "mse", "R")}})
    out = Path(args.json)
    previous = json.loads(out.read_text()) if out.exists() else {}
    notes = previous.get("notes", "")
    out.write_text(json.dumps({"notes": notes, "attempts": attempts, "provenance": provenance()}, indent=2) + "\n")
    print(json.dumps(attempts, indent=1))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", nargs="+", help="name=run_directory, e.g. ia=runs/ia")
    parser.add_argument("--screening", nargs="+", help="screening run directories of the VAE")
    parser.add_argument("--images", type=int, default=256)
    parser.add_argument("--jacobian-images", type=int, default=16)
    parser.add_argument("--batch", type=int, default=64)
    parser.add_argument("--json", default=None)
    parser.add_argument("--plot", default=str(ROOT / "docs" / "interaction_asymmetry_masks.png"))
    args = parser.parse_args()
    torch.set_num_threads(1)
    if args.screening:
        args.json = args.json or str(RESULTS / "interaction_asymmetry_screening.json")
        screening(args)
    elif args.runs:
        args.json = args.json or str(RESULTS / "interaction_asymmetry.json")
        compare(args)
    else:
        parser.error("give --runs or --screening")


if __name__ == "__main__":
    main()
