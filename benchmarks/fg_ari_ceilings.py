"""How high can FG-ARI go on the procedural scenes for masks of a given fidelity?

FG-ARI scores every foreground pixel, so at small image sizes a blurred object edge costs a lot. This
prints, per scene setting, the FG-ARI of three reference segmentations built from the ground truth:

- ``colour_components``: connected components of equal-colour pixels (what colour alone can separate;
  objects of one repeated colour that touch are merged, an object split by an occluder counts twice);
- ``half_res``: the true masks averaged to half resolution and upsampled bilinearly (a decoder that is
  exact at half resolution);
- ``eroded_1px``: every object loses its one-pixel rim to the background.

``PYTHONPATH=. python benchmarks/fg_ari_ceilings.py`` (about 6 s); JSON in ``--json``.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from rich.console import Console
from rich.table import Table
from scipy import ndimage

from deqkit.data import SceneConfig, render_batch
from deqkit.metrics import fg_ari
from deqkit.provenance import provenance

ROOT = Path(__file__).resolve().parents[1]
SETTINGS = [  # (image size, colours, objects, size range)
    (32, "palette", (2, 4), (0.1, 0.2)),
    (32, "hsv", (2, 4), (0.1, 0.2)),
    (32, "hsv", (2, 4), (0.15, 0.3)),
    (48, "hsv", (2, 4), (0.1, 0.2)),
    (64, "palette", (2, 4), (0.1, 0.2)),
    (64, "hsv", (2, 4), (0.1, 0.2)),
]


def colour_components(image: np.ndarray) -> np.ndarray:
    """``[3,H,W]`` flat-coloured image -> ``[H,W]`` ids of its connected equal-colour regions."""
    key = np.round(image * 255).astype(np.int64)
    key = (key[0] << 16) | (key[1] << 8) | key[2]
    out, next_id = np.zeros(key.shape, np.int64), 1
    for colour in np.unique(key):
        labels, n = ndimage.label(key == colour)
        out[labels > 0] = labels[labels > 0] + next_id - 1
        next_id += n
    return out


def eroded(mask: np.ndarray) -> np.ndarray:
    out = np.zeros_like(mask)
    for k in np.unique(mask)[1:]:
        out[ndimage.binary_erosion(mask == k)] = k
    return out


def half_resolution(masks: torch.Tensor, max_id: int) -> torch.Tensor:
    """``[B,H,W]`` ids -> soft masks ``[B,K,H,W]`` exact at half resolution, bilinear in between."""
    size = masks.shape[-1]
    one_hot = F.one_hot(masks, max_id + 1).permute(0, 3, 1, 2).float()
    low = F.interpolate(one_hot, size=(size // 2, size // 2), mode="area")
    return F.interpolate(low, size=(size, size), mode="bilinear", align_corners=False)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--images", type=int, default=500, help="validation scenes per setting")
    parser.add_argument("--json", default=str(ROOT / "benchmarks" / "results" / "fg_ari_ceilings.json"))
    args = parser.parse_args()
    table = Table(title=f"FG-ARI of reference segmentations ({args.images} validation scenes each)")
    for column in ("size", "colours", "objects", "size range", "colour components", "half-res masks",
                   "eroded 1 px"):
        table.add_column(column, justify="right")
    rows = []
    for image_size, colours, (lo, hi), size_range in SETTINGS:
        cfg = SceneConfig(image_size=image_size, min_objects=lo, max_objects=hi, size_range=size_range,
                          colors=colours, val_size=max(1000, args.images))
        batch = render_batch(cfg, "val", range(args.images))
        truth = batch["mask"]
        images = batch["image"].numpy()
        scores = {
            "colour_components": fg_ari(truth, torch.from_numpy(np.stack([colour_components(i) for i in images]))),
            "half_res": fg_ari(truth, half_resolution(truth, hi)),
            "eroded_1px": fg_ari(truth, torch.from_numpy(np.stack([eroded(m) for m in truth.numpy()]))),
        }
        row = {"image_size": image_size, "colors": colours, "objects": [lo, hi], "size_range": list(size_range),
               **{k: round(v.mean().item(), 4) for k, v in scores.items()}}
        rows.append(row)
        table.add_row(str(image_size), colours, f"{lo}-{hi}", f"{size_range[0]}-{size_range[1]}",
                      *(f"{row[k]:.3f}" for k in scores))
    Console().print(table)
    path = Path(args.json)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"benchmark": "fg_ari_ceilings", "images": args.images, "rows": rows,
                                "provenance": provenance()}, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
