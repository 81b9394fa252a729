"""How close the trainer's logged ‖J‖ (``train.spectral_iters`` Lanczos steps) is to the exact spectral norm.

Figure 5 of Chang et al. compares ‖∂f/∂z‖₂ of the slot attention step over training, and deqkit's applications
log it with a few Lanczos steps (3 in the slot attention cpu preset, a lower bound). This script loads
checkpoints, runs each on validation images, and for every image compares the logged-style estimate (and a
50-step one) with the largest singular value of the dense Jacobian at the same state (``torch.func.jacrev``
on one sample, ``torch.linalg.matrix_norm(ord=2)``)::

    PYTHONPATH=. python benchmarks/spectral_estimate.py RUN_OR_CHECKPOINT... [--images 16] [--json PATH]
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

import torch

from benchmarks.common import mean_sd, print_table, write_json
from deqkit.diagnostics import spectral_norm
from deqkit.diagnostics.report import fixed_points
from deqkit.train.restore import restore

ROOT = Path(__file__).resolve().parents[1]


def exact_norms(f: Any, z: torch.Tensor) -> torch.Tensor:
    """‖∂f/∂z‖₂ per sample from the dense per-sample Jacobian (samples are independent)."""
    norms = []
    for b in range(z.shape[0]):
        def one(zb: torch.Tensor, b: int = b) -> torch.Tensor:
            full = z.detach().clone()
            full[b] = zb
            return f(full)[b]
        jac = torch.func.jacrev(one)(z[b].detach()).reshape(z[b].numel(), z[b].numel())
        norms.append(torch.linalg.matrix_norm(jac.double(), ord=2))
    return torch.stack(norms)


def measure(checkpoint: Path, images: int, logged_iters: int | None) -> dict[str, Any]:
    restored = restore(checkpoint, "cpu")
    model, cfg = restored.model.eval(), restored.config
    iters = logged_iters or cfg.train.spectral_iters
    data = restored.app.build_dataset(cfg, "val")
    batch = torch.utils.data.default_collate([data[i] for i in range(images)])
    with torch.no_grad():
        restored.app.loss(model, batch, cfg)
    [(name, fp)] = fixed_points(model)
    f, z = fp.closure(*fp.last.inputs), fp.last.z
    gen = torch.Generator().manual_seed(0)
    with torch.enable_grad():
        logged = spectral_norm(f, z, iters=iters, generator=gen).double()
        long = spectral_norm(f, z, iters=50, generator=gen).double()
        exact = exact_norms(f, z)
    ratio = logged / exact
    return {"fixed_point": name, "backward": getattr(cfg, "backward", None), "logged_iters": iters,
            "state_dim": z[0].numel(), "exact": mean_sd(exact.tolist()), "logged": mean_sd(logged.tolist()),
            "lanczos_50": mean_sd(long.tolist()), "logged_over_exact": mean_sd(ratio.tolist()),
            "lanczos_50_over_exact_min": (long / exact).min().item()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("runs", nargs="+", type=Path, help="run directories (their last checkpoint) or checkpoints")
    parser.add_argument("--images", type=int, default=16)
    parser.add_argument("--iters", type=int, default=None, help="Lanczos steps to compare (default: the run's "
                                                                  "train.spectral_iters)")
    parser.add_argument("--json", type=Path, default=ROOT / "benchmarks" / "results" / "spectral_estimate.json")
    args = parser.parse_args()
    torch.set_num_threads(1)
    results = {}
    for run in args.runs:
        checkpoint = run / "checkpoints" / "last.safetensors" if run.is_dir() else run
        results[run.name] = measure(checkpoint, args.images, args.iters)
    print_table(f"‖J‖₂ per image, {args.images} validation images", ["run", "backward", "exact", "logged-style",
                                                                     "logged / exact", "50 steps / exact (min)"],
                [[k, r["backward"], r["exact"]["mean"], r["logged"]["mean"], r["logged_over_exact"]["mean"],
                  r["lanczos_50_over_exact_min"]] for k, r in results.items()])
    write_json(args.json, "spectral_estimate", {"images": args.images, "iters": args.iters,
                                                "runs": [str(r) for r in args.runs]}, results)


if __name__ == "__main__":
    main()
