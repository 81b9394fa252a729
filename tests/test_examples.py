"""The examples run end to end in quick mode and show what their docstrings claim.

Each example is imported by path (``examples/`` is not a package) and its ``main(["--quick"])`` is run;
the claims are checked on the numbers it returns. About 10 s in total on one thread.
"""

from __future__ import annotations

import importlib.util
from pathlib import Path
from types import ModuleType

import pytest

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"


def load(name: str) -> ModuleType:
    spec = importlib.util.spec_from_file_location(f"deqkit_example_{name}", EXAMPLES / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_tanh_deq_trains_with_ift_and_with_neumann(capsys: pytest.CaptureFixture[str]) -> None:
    results = load("tanh_deq").main(["--quick"])
    assert set(results) == {"IFT()", "Neumann(1)"}
    for r in results.values():
        assert r["losses"][-1] < 0.8 * r["losses"][0]  # quick mode: 60 steps from ≈ log 2
        assert r["accuracy"] > 0.6  # two spirals, chance = 0.5
        assert 1 <= r["nfe"] <= 60  # ‖W‖₂ = 0.9 keeps the step a contraction: Anderson converges early
    assert results["IFT()"]["accuracy"] > 0.75
    assert "Neumann(1)" in capsys.readouterr().out


def test_sinkhorn_implicit_gradient_matches_unrolled_loop_with_far_less_memory() -> None:
    r = load("sinkhorn").main(["--quick"])
    for name, rel in r["relative_difference"].items():
        assert rel < 1e-6, f"gradient w.r.t. {name}: relative difference {rel:.1e}"
    bytes_ift, bytes_unrolled = r["bytes"]
    assert bytes_ift * 50 < bytes_unrolled  # one sweep recorded instead of 400
    assert (r["nfe"] < 100).all()  # Anderson converged to 1e-10 well before the unrolled loop's 400 sweeps


def test_soft_kmeans_gradient_matches_unrolled_and_embedding_learns_the_classes() -> None:
    r = load("soft_kmeans").main(["--quick"])
    assert r["relative_difference"] < 1e-8
    assert r["losses"][-1] < 0.5 * r["losses"][0]
    before, after = r["accuracy"]
    assert after > before + 0.15  # 40 steps; the full run reaches ≈ 1.0
