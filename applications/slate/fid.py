"""FID of a SLATE checkpoint's slot reconstructions against its inputs.

``python -m applications.slate.fid CHECKPOINT [--inception-weights PATH] [--split test] [--batches N]``

Without ``--inception-weights`` the small fixed random extractor of :mod:`deqkit.metrics.fid` is used (it
compares models on one dataset; it is not the published Inception FID). Prints one JSON line.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import torch

from deqkit.errors import DeqkitError
from deqkit.metrics import fid_metric, small_extractor
from deqkit.train.data import eval_batches
from deqkit.train.restore import restore


def slot_fid(checkpoint: str | Path, *, split: str = "test", batches: int | None = 8,
             inception_weights: str | Path | None = None) -> dict[str, float]:
    """FID of the slot reconstructions and of the dVAE reconstructions against the inputs of ``split``."""
    restored = restore(checkpoint)
    model, config = restored.model.eval(), restored.config
    extractor = None if inception_weights else small_extractor()
    metrics = {name: fid_metric(extractor, inception_weights=inception_weights) for name in ("slots", "dvae")}
    data = restored.app.build_dataset(config, split)
    with torch.no_grad():
        for batch in eval_batches(data, config.train.batch_size, batches, restored.app.collate):
            image = batch["image"]
            out = model(image)
            for name, recon in (("slots", model.reconstruct(out["slots"])), ("dvae", out["dvae"]["recon"])):
                metrics[name].update(image, real=True)
                metrics[name].update(recon.float().clamp(0, 1), real=False)
    return {f"fid_{name}": float(m.compute()) for name, m in metrics.items()} | {
        "extractor": "inception-v3" if inception_weights else "small-random-cnn"}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("checkpoint")
    parser.add_argument("--split", default="test")
    parser.add_argument("--batches", type=int, default=8)
    parser.add_argument("--inception-weights", default=None, help="local Inception-v3 weights file (FID proper)")
    args = parser.parse_args(argv)
    try:
        print(json.dumps(slot_fid(args.checkpoint, split=args.split, batches=args.batches,
                                  inception_weights=args.inception_weights)))
    except DeqkitError as err:
        print("error: " + " ".join(str(err).split()), file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
