"""deqkit.diagnose on a plain module deqkit did not train (API and `deqkit diagnose --model`), checked against
dense linear algebra: ρ(J), ‖J‖₂, the Neumann(1)-vs-IFT cosine per batch and its spread, and the readings."""

from __future__ import annotations

import json
import math
import textwrap

import pytest
import torch
from safetensors.torch import save_file
from typer.testing import CliRunner

import deqkit
from deqkit.cli import app

# A linear step z <- A z + b + x: J = A everywhere, so the truth is dense linear algebra.
MODULE = textwrap.dedent('''
    import torch
    from torch import nn
    import deqkit

    class Linear(nn.Module):
        def __init__(self, a, tol=1e-6, max_iter=200, solver="anderson"):
            super().__init__()
            self.register_buffer("a", torch.as_tensor(a, dtype=torch.float64))
            self.b = nn.Parameter(torch.linspace(-0.5, 0.5, self.a.shape[0], dtype=torch.float64))
            self.fp = deqkit.FixedPoint(self.step, tol=tol, max_iter=max_iter, solver=solver)

        def step(self, z, x):
            return z @ self.a.T + self.b + x

        def forward(self, x):
            z, _ = self.fp(torch.zeros_like(x), x)
            return z

    def build():
        return Linear([[0.5, 2.0], [0.0, 0.5]])  # rho 0.5, norm 2.14: non-normal

    def loss(model, batch):
        return (model(batch["x"]) * batch["w"]).sum()
''')

NON_NORMAL = torch.tensor([[0.5, 2.0], [0.0, 0.5]], dtype=torch.float64)


@pytest.fixture()
def user_module(tmp_path, monkeypatch):
    (tmp_path / "user_model.py").write_text(MODULE)
    monkeypatch.syspath_prepend(str(tmp_path))
    monkeypatch.chdir(tmp_path)
    import importlib

    import user_model

    return importlib.reload(user_model)


def _batch(w: list[float], n: int = 8) -> dict[str, torch.Tensor]:
    x = torch.linspace(-1, 1, 2 * n, dtype=torch.float64).reshape(n, 2)
    return {"x": x, "w": torch.tensor(w, dtype=torch.float64).expand(n, 2).contiguous()}


def _oracle_cosine(a: torch.Tensor, w: torch.Tensor) -> float:
    """d loss/d b: Neumann(1) gives w (one step from z*, ∂f/∂b = I); IFT gives (I − Aᵀ)⁻¹ w."""
    exact = torch.linalg.solve(torch.eye(2, dtype=a.dtype) - a.T, w)
    return float(w @ exact / (w.norm() * exact.norm()))


def test_diagnose_a_plain_module_matches_dense_linear_algebra(user_module):
    model = user_module.build()
    batches = [_batch([1.0, 0.0]), _batch([0.0, 1.0]), _batch([1.0, 1.0])]
    report = deqkit.diagnostics.diagnose_batches(model, batches, user_module.loss)
    fp = report["fixed_points"]["fp"]
    assert report["batches"] == 3 and report["samples"] == 24
    assert fp["tol"] == 1e-6 and fp["stop_mode"] == "rel" and fp["converged"] == 1.0 and not fp["fixed_count"]
    assert fp["spectral_radius_max"] == pytest.approx(0.5, rel=1e-3)
    assert fp["spectral_norm_max"] == pytest.approx(float(torch.linalg.matrix_norm(NON_NORMAL, 2)), rel=1e-3)
    expected = [_oracle_cosine(NON_NORMAL, b["w"][0]) for b in batches]
    assert report["gradient_cosine_per_batch"] == pytest.approx(expected, abs=1e-5)
    assert report["gradient_cosine"] == pytest.approx(sum(expected) / 3, abs=1e-5)
    assert report["gradient_cosine_min"] == pytest.approx(min(expected), abs=1e-5)
    assert report["gradient_cosine_max"] == pytest.approx(max(expected), abs=1e-5)
    assert report["gradient_cosine_sd"] == pytest.approx(torch.tensor(expected).std().item(), abs=1e-5)
    # ‖J‖₂ > 1 > ρ: contracts only asymptotically; 0.5 per step is 4 steps per digit (log 10 / log 2 = 3.3)
    assert "for 24 of 24 samples ‖J‖₂ ≥ 1 > ρ(J)" in fp["readings"]["spectral_norm"]
    assert "ρ(J) < 1 for every sample" in fp["readings"]["spectral_radius"]
    assert "4 steps per decimal digit" in fp["readings"]["spectral_radius"]
    assert "100% of samples reached residual ≤ 1e-06" in fp["readings"]["converged"]
    assert f"{min(expected):.3g} to {max(expected):.3g}" in report["gradient_cosine_reading"]
    # the model is left as it was: train mode, its backward estimator and last record
    assert model.training and type(model.fp.backward).__name__ == "IFT" and model.fp.last is None


def test_one_batch_without_a_loss_is_the_public_one_call(user_module):
    model = user_module.Linear([[1.5, 0.0], [0.0, 0.5]], tol=None, max_iter=5, solver="iteration")
    report = deqkit.diagnose(model, torch.ones(4, 2, dtype=torch.float64))
    fp = report["fixed_points"]["fp"]
    assert fp["fixed_count"] and fp["converged"] is None and fp["nfe"] == 5
    assert "tol=None runs exactly 5 iterations" in fp["readings"]["converged"]
    assert fp["spectral_radius_max"] == pytest.approx(1.5, rel=1e-3) and fp["spectral_radius_over_1"] == 1.0
    assert "ρ(J) ≥ 1 for 4 of 4 samples" in fp["readings"]["spectral_radius"]
    assert "more iterations will not help" in fp["readings"]["spectral_radius"]
    assert report["gradient_cosine"] is None and "no loss" in report["gradient_cosine_reading"]
    json.dumps(report)  # JSON-ready


def test_a_module_without_a_fixed_point_is_a_one_line_error():
    with pytest.raises(deqkit.ConfigError, match="no deqkit.FixedPoint"):
        deqkit.diagnose(torch.nn.Linear(2, 2), torch.zeros(1, 2))


def test_cli_diagnoses_a_model_spec_with_weights_and_batch_files(user_module, tmp_path):
    model = user_module.build()
    with torch.no_grad():
        model.b.copy_(torch.tensor([0.25, -0.75], dtype=torch.float64))
    save_file(model.state_dict(), str(tmp_path / "w.safetensors"))
    for i, w in enumerate(([1.0, 0.0], [0.0, 1.0])):
        save_file(_batch(w), str(tmp_path / f"b{i}.safetensors"))
    runner = CliRunner()
    args = ["diagnose", "--model", "user_model:build", "--weights", "w.safetensors", "--batch", "b0.safetensors",
            "--batch", "b1.safetensors", "--loss", "user_model:loss"]
    result = runner.invoke(app, args + ["--json", "--out", "d.json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report == json.loads((tmp_path / "d.json").read_text())
    assert report["model"] == "user_model:build" and report["batches"] == 2 and report["samples"] == 16
    expected = [_oracle_cosine(NON_NORMAL, torch.tensor(w, dtype=torch.float64)) for w in ([1.0, 0], [0, 1.0])]
    assert report["gradient_cosine_per_batch"] == pytest.approx(expected, abs=1e-5)
    assert report["fixed_points"]["fp"]["spectral_radius_max"] == pytest.approx(0.5, rel=1e-3)
    table = runner.invoke(app, args, env={"COLUMNS": "80"})
    assert table.exit_code == 0, table.output
    assert "tolerance (stop mode)" in table.stdout and "1e-06 (rel)" in table.stdout
    assert f"min {min(expected):.4g}, max {max(expected):.4g}" in table.stdout.replace("\n", "")
    assert all(len(line) <= 80 for line in table.stdout.splitlines())
    # a file path works as well as a module name; without --loss the batch is passed as model(**batch)
    save_file({"x": _batch([1.0, 0.0])["x"]}, str(tmp_path / "x.safetensors"))
    by_path = runner.invoke(app, ["diagnose", "--model", f"{tmp_path / 'user_model.py'}:build", "--weights",
                                  "w.safetensors", "--batch", "x.safetensors", "--json"])
    assert by_path.exit_code == 0, by_path.output
    alone = json.loads(by_path.stdout)
    assert alone["fixed_points"]["fp"]["residual_max"] < 1e-5 and alone["gradient_cosine"] is None


@pytest.mark.parametrize("args, code, message", [
    (["--model", "user_model:build"], 2, "--model needs --batch FILE"),
    (["--model", "user_model", "--batch", "b.safetensors"], 2, "expects MODULE:NAME"),
    (["--model", "no_such_module:build", "--batch", "b.safetensors"], 2, "no module named 'no_such_module'"),
    (["--model", "user_model:nope", "--batch", "b.safetensors"], 2, "has no attribute 'nope'"),
    (["--model", "user_model:build", "--batch", "missing.safetensors"], 1, "not found"),
    (["--model", "user_model:build", "--batch", "b.safetensors", "--weights", "bad.safetensors"], 1,
     "does not fit the model"),
    (["--model", "user_model:build", "--batch", "b.safetensors", "--set", "x=1"], 2, "--set does not apply"),
    (["ckpt.safetensors", "--model", "user_model:build", "--batch", "b.safetensors"], 2, "not both"),
    ([], 2, "diagnose needs a CHECKPOINT"),
])
def test_model_spec_mistakes_are_one_line_errors(user_module, tmp_path, args, code, message):
    save_file({"x": torch.ones(2, 2, dtype=torch.float64)}, str(tmp_path / "b.safetensors"))
    save_file({"b": torch.zeros(3, dtype=torch.float64), "a": torch.eye(2)}, str(tmp_path / "bad.safetensors"))
    result = CliRunner().invoke(app, ["diagnose", *args])
    assert result.exit_code == code, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and message in lines[0], result.stderr


def test_readings_follow_the_maths():
    from deqkit.diagnostics import readings

    radii = torch.tensor([0.9, 0.1])
    assert "22 steps per decimal digit" in readings.spectral_radius(radii)  # log 10 / -log 0.9 = 21.85
    assert "ρ(J) ≥ 1 for 1 of 2" in readings.spectral_radius(torch.tensor([1.2, 0.3]))
    both = readings.spectral_norm(torch.tensor([1.3, 1.5, 0.5]), torch.tensor([0.7, 1.2, 0.4]))
    assert "for 1 of 3 samples ‖J‖₂ ≥ 1 > ρ(J)" in both and "for 1 of 3 samples ρ(J) ≥ 1 as well" in both
    assert "cos ≤ 0" in readings.gradient_cosine(-0.2, [-0.2])
    spread = readings.gradient_cosine(0.485, [0.13, 0.84])
    assert "ranges 0.13 to 0.84" in spread and "hides batches that disagree" in spread and "61°" in spread
    assert math.isclose(math.degrees(math.acos(0.485)), 61, abs_tol=0.5)
