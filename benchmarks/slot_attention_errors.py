"""Where a slot attention checkpoint loses FG-ARI: merged objects, split objects, rims lost to the background.

For every test scene the background slot is the slot holding most true-background pixels. Per object:
``merged`` when its main (non-background) slot is also the main slot of another object of the scene,
``split`` when a second slot holds more than 20 % of its non-background pixels. ``rim`` is the fraction of
foreground pixels assigned to the background slot. Scenes are also split by whether two objects touch
(pixels of different objects within ``--gap`` pixels, occlusion included): FG-ARI of each group.

``PYTHONPATH=. python benchmarks/slot_attention_errors.py runs/sa/checkpoints/last.safetensors``
"""

from __future__ import annotations

import argparse
import json
from collections import Counter
from pathlib import Path

import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table

from deqkit.data import render_batch
from deqkit.metrics import fg_ari
from deqkit.provenance import provenance
from deqkit.train.restore import restore


def object_ids(true_mask: torch.Tensor) -> torch.Tensor:
    """The object ids of one scene's instance mask ``[H,W]`` (0 is background, which may be absent)."""
    ids = true_mask.unique()
    return ids[ids > 0]


def object_errors(true: torch.Tensor, pred: torch.Tensor, num_slots: int) -> dict[str, Counter]:
    """Counts per number of objects: ``objects``, ``merged``, ``split``; and the summed ``rim`` fraction."""
    counts: dict[str, Counter] = {k: Counter() for k in ("images", "objects", "merged", "split", "rim")}
    for t, p in zip(true, pred):
        background = torch.bincount(p[t == 0], minlength=num_slots).argmax()
        ids = object_ids(t)
        n, owners = len(ids), []
        for obj in ids:
            hits = torch.bincount(p[t == obj], minlength=num_slots).float()
            hits[background] = 0
            if hits.sum() > 0:
                share = hits / hits.sum()
                owners.append(int(share.argmax()))
                counts["split"][n] += int((share > 0.2).sum() > 1)
        counts["merged"][n] += len(owners) - len(set(owners))
        counts["objects"][n] += n
        counts["images"][n] += 1
        foreground = t > 0
        counts["rim"][n] += ((p == background) & foreground).sum().item() / max(1, foreground.sum().item())
    return counts


def objects_touch(true: torch.Tensor, gap: int = 1) -> torch.Tensor:
    """``[B]`` bool: whether pixels of two different objects of a scene ``[B,H,W]`` lie within ``gap`` pixels
    (Chebyshev distance) of each other."""
    result = []
    for t in true:
        ids = object_ids(t)
        if len(ids) < 2:
            result.append(False)
            continue
        own = (t[None] == ids[:, None, None]).float()  # [n,H,W]
        near = F.max_pool2d(own[:, None], 2 * gap + 1, stride=1, padding=gap)[:, 0] > 0
        others = (t[None] > 0) & (t[None] != ids[:, None, None])
        result.append(bool((near & others).any()))
    return torch.tensor(result, dtype=torch.bool)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("checkpoint")
    parser.add_argument("--scenes", type=int, default=512)
    parser.add_argument("--gap", type=int, default=1, help="objects this close (pixels) count as touching")
    parser.add_argument("--json", default="", help="also write the numbers here")
    args = parser.parse_args()
    restored = restore(args.checkpoint)  # the model in eval mode, rebuilt from the checkpoint alone
    model = restored.model
    batch = render_batch(restored.config.data, "test", range(args.scenes))
    with torch.no_grad(), torch.random.fork_rng():
        torch.manual_seed(0)
        out = model(batch["image"])
    scores = fg_ari(batch["mask"], out["masks"])
    counts = object_errors(batch["mask"], out["masks"].argmax(1), out["masks"].shape[1])
    table = Table(title=f"{args.checkpoint}: FG-ARI {scores.mean():.3f} on {args.scenes} test scenes, "
                        f"{(scores > 0.9).float().mean():.0%} of them above 0.9")
    for column in ("objects", "scenes", "merged", "split", "rim to background"):
        table.add_column(column, justify="right")
    rows = []
    for n in [*sorted(counts["objects"]), "all"]:
        pick = lambda key: sum(counts[key].values()) if n == "all" else counts[key][n]  # noqa: E731
        row = {"objects": n, "scenes": pick("images"), "merged": pick("merged") / pick("objects"),
               "split": pick("split") / pick("objects"), "rim": pick("rim") / pick("images")}
        rows.append(row)
        table.add_row(str(n), str(row["scenes"]), f"{row['merged']:.1%}", f"{row['split']:.1%}", f"{row['rim']:.1%}")
    touch = objects_touch(batch["mask"], args.gap)
    by_contact = {name: {"scenes": int(pick.sum()), "fg_ari": scores[pick].mean().item() if pick.any() else None}
                  for name, pick in (("touching", touch), ("apart", ~touch))}
    console = Console()
    console.print(table)
    console.print(f"FG-ARI by contact (objects within {args.gap} px): " + ", ".join(
        f"{name} {v['fg_ari']:.3f} ({v['scenes']} scenes)" for name, v in by_contact.items() if v["scenes"]))
    if args.json:
        Path(args.json).write_text(json.dumps({"checkpoint": args.checkpoint, "fg_ari": scores.mean().item(),
                                               "above_0.9": (scores > 0.9).float().mean().item(), "rows": rows,
                                               "gap": args.gap, "by_contact": by_contact,
                                               "provenance": provenance(),
                                               "trained_by": restored.checkpoint.provenance,
                                               "code": ["applications/slot_attention",
                                                        "benchmarks/slot_attention_errors.py", "deqkit"]},
                                              indent=1))


if __name__ == "__main__":
    main()
