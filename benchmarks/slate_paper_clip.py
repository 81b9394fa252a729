"""How differently the two gradient clips act on SLATE's `paper` preset at initialisation: the global L2
norm (what deqkit's trainer clips to `train.grad_clip`) against the largest absolute entry (what SLATE's
code clips to 1.0, `clip_grad_norm_(..., 'inf')`), on one training batch of 4 images per seed.

``PYTHONPATH=. python benchmarks/slate_paper_clip.py [--preset paper] [--seeds 0 1]``; ~30 s per seed on
one core; JSON in benchmarks/results/slate_paper_clip.json.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from applications.slate.app import APP, build_dataset

RESULTS = Path(__file__).parent / "results" / "slate_paper_clip.json"


def gradient_norms(preset: str, seed: int, batch_size: int = 4) -> dict[str, float]:
    """L2 norm and max-abs entry of the gradient of the loss on one batch of a freshly built model."""
    cfg = APP.make_config(preset, [f"train.batch_size={batch_size}"])
    torch.manual_seed(seed)
    model = APP.build_model(cfg)
    batch = torch.utils.data.default_collate([build_dataset(cfg, "train")[i] for i in range(batch_size)])
    start = time.perf_counter()
    loss, _ = APP.loss(model, batch, cfg)
    loss.backward()
    grads = torch.cat([p.grad.flatten() for p in model.parameters() if p.grad is not None])
    l2, max_abs = grads.norm().item(), grads.abs().max().item()
    return {"l2": l2, "max_abs": max_abs, "ratio": l2 / max_abs, "seconds": time.perf_counter() - start}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--preset", default="paper")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    args = parser.parse_args()
    torch.set_num_threads(1)
    result = {"preset": args.preset, "batch_size": 4,
              "seeds": {str(seed): gradient_norms(args.preset, seed) for seed in args.seeds}}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(result, indent=2) + "\n")
    print(json.dumps(result, indent=2))


if __name__ == "__main__":
    main()
