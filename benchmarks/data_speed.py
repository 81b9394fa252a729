"""How fast the procedural scenes render on one core, at several image sizes.

Measures ``SceneDataset.__getitem__`` (one scene rendered, converted to padded tensors) and a
``DataLoader(batch_size=64, num_workers=0)`` pass, taking the best of ``--repeats`` timings because the
machine may be shared. Prints a table and writes JSON.

    python benchmarks/data_speed.py                       # 32/64/128 px, ~5 s
    python benchmarks/data_speed.py --sizes 256 --items 100 --json /tmp/speed.json
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import DataLoader

sys.path.insert(0, str(Path(__file__).parent))  # common.py, however the script is run
from common import best_seconds  # noqa: E402
from deqkit.data import BACKGROUNDS, COLOR_MODES, SceneConfig, SceneDataset
from deqkit.provenance import provenance

DEFAULT_JSON = Path(__file__).parent / "results" / "data_speed.json"


def measure(config: SceneConfig, items: int, batch_size: int, repeats: int) -> dict:
    """Items per second for single-item access and for collated DataLoader batches."""
    ds = SceneDataset(config, "train")
    single = best_seconds(lambda: [ds[i] for i in range(items)], repeats, warmup=False)
    loader = DataLoader(ds, batch_size=batch_size, num_workers=0)

    def run_loader() -> None:
        seen = 0
        for batch in loader:
            seen += len(batch["image"])
            if seen >= items:
                break

    batched = best_seconds(run_loader, repeats, warmup=False)
    n_loaded = min(items, len(ds))
    n_loaded = -(-n_loaded // batch_size) * batch_size  # whole batches are drawn
    objects = np.mean([int(ds[i]["num_objects"]) for i in range(min(items, 100))])
    return {
        "image_size": config.image_size,
        "items_per_s": items / single,
        "ms_per_item": 1e3 * single / items,
        "loader_items_per_s": n_loaded / batched,
        "ms_per_batch": 1e3 * batched / (n_loaded / batch_size),
        "batch_size": batch_size,
        "mean_objects": float(objects),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sizes", type=int, nargs="+", default=[32, 64, 128], help="image sizes in pixels")
    parser.add_argument("--items", type=int, default=320, help="scenes rendered per timing")
    parser.add_argument("--batch-size", type=int, default=64)
    parser.add_argument("--repeats", type=int, default=3, help="timings per size; the best is kept")
    parser.add_argument("--background", choices=BACKGROUNDS, default="plain")
    parser.add_argument("--colors", choices=COLOR_MODES, default="palette")
    parser.add_argument("--json", type=Path, default=DEFAULT_JSON, help="where to write the results")
    args = parser.parse_args()

    torch.set_num_threads(1)  # one core, as a DataLoader worker would have
    rows = []
    for size in args.sizes:
        cfg = SceneConfig(image_size=size, background=args.background, colors=args.colors,
                          train_size=max(args.items, args.batch_size))
        rows.append(measure(cfg, args.items, args.batch_size, args.repeats))

    header = f"{'size':>5} {'items/s':>9} {'ms/item':>8} {'loader items/s':>15} {'ms/batch':>9} {'objects':>8}"
    print(f"deqkit.data scenes, one core, background={args.background}, colors={args.colors}")
    print(header)
    for r in rows:
        print(f"{r['image_size']:>5} {r['items_per_s']:>9.0f} {r['ms_per_item']:>8.3f} "
              f"{r['loader_items_per_s']:>15.0f} {r['ms_per_batch']:>9.1f} {r['mean_objects']:>8.2f}")

    args.json.parent.mkdir(parents=True, exist_ok=True)
    report = {
        "benchmark": "data_speed",
        "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
        "machine": {"python": platform.python_version(), "processor": platform.processor() or platform.machine(),
                    "numpy": np.__version__, "torch": torch.__version__, "threads": torch.get_num_threads()},
        "provenance": provenance(),
        "results": rows,
    }
    args.json.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
