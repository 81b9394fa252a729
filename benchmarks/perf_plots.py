"""The PNG plots of ``python -m benchmarks``: solver outcome per problem, gradient error against backward time."""

from __future__ import annotations

from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
from matplotlib.ticker import NullFormatter  # noqa: E402

MARKERS = {"iteration": "o", "anderson": "s", "broyden": "^"}
COLOURS = {"deqkit": "tab:blue", "torchdeq": "tab:orange"}


def _grid(n: int):
    cols = min(n, 4)
    rows = (n + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, figsize=(4 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.flat[n:]:
        ax.axis("off")
    return fig, list(axes.flat)


def suite_plot(results: dict, path: Path) -> None:
    """Per problem: fraction of samples within rel 1e-5 against wall time, one marker per solver (tol 1e-5 runs)."""
    rows = [r for r in results["rows"] if r["tol"] == 1e-5]
    problems = list(dict.fromkeys(r["problem"] for r in rows))
    fig, axes = _grid(len(problems))
    for ax, name in zip(axes, problems):
        for r in (r for r in rows if r["problem"] == name):
            ax.scatter(r["seconds"], r["converged_1e-5"], marker=MARKERS[r["solver"]], color=COLOURS[r["library"]],
                       s=60, alpha=0.8, label=f"{r['library']} {r['solver']}")
        ax.set_xscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_ylim(-0.05, 1.05)
        ax.set_title(name, fontsize=10)
        ax.set_xlabel("seconds (median)")
        ax.set_ylabel("samples ≤ 1e-5")
    axes[0].legend(fontsize=7)
    fig.suptitle("solvers on the suite (tol rel 1e-5; up-left is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def gradients_plot(results: dict, path: Path) -> None:
    """Per problem: relative gradient error against backward time, one point per estimator."""
    probs = [p for p in results["problems"] if p["rows"]]
    fig, axes = _grid(len(probs))
    for ax, prob in zip(axes, probs):
        for r in prob["rows"]:
            ax.scatter(r["seconds"], max(r["relative_error"], 1e-9), s=40)
            ax.annotate(r["estimator"].replace(" λ=0.5", ""), (r["seconds"], max(r["relative_error"], 1e-9)), fontsize=6)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_title(f"{prob['problem']} (ρ = {prob['spectral_radius']['max']:.2f})", fontsize=10)
        ax.set_xlabel("backward seconds")
        ax.set_ylabel("relative error vs oracle")
    fig.suptitle("gradient estimators: error against cost (down-left is better)")
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=90)
    plt.close(fig)
    print(f"wrote {path}")


def main() -> None:
    """Redraw both plots from the JSON results (``python benchmarks/perf_plots.py``)."""
    import json

    results = Path(__file__).parent / "results"
    docs = Path(__file__).parent.parent / "docs"
    suite_plot(json.loads((results / "suite.json").read_text())["results"], docs / "performance_suite.png")
    gradients_plot(json.loads((results / "gradients.json").read_text())["results"], docs / "performance_gradients.png")


if __name__ == "__main__":
    main()
