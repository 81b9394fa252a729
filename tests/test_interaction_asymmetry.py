"""Interaction-asymmetry application: the model's pieces follow the paper's equations, decoding a subset
of pixels is exact, the loss's schedules ramp as documented, and the CLI trains, evaluates (FG-ARI, J-ARI,
JIS, MSE) and rejects bad configs in one line."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from applications.interaction_asymmetry.app import schedule
from applications.interaction_asymmetry.model import InteractionAsymmetryVAE, gaussian_kl, interaction_penalty
from deqkit.cli import app as cli
from deqkit.data import render_batch
from deqkit.train import ConfigError, load_application

ROOT = Path(__file__).resolve().parents[1]
APP_DIR = str(ROOT / "applications" / "interaction_asymmetry")
runner = CliRunner()


def tiny_model() -> InteractionAsymmetryVAE:
    torch.manual_seed(0)
    return InteractionAsymmetryVAE(16, num_slots=3, latent_dim=4, dim=16, encoder_layers=2, heads=2,
                                   frequencies=2)


def test_masks_partition_pixels_and_a_pixel_subset_decodes_the_same_pixels():
    model = tiny_model().eval()
    image = torch.rand(2, 3, 16, 16)
    out = model(image)
    assert out["recon"].shape == (2, 3, 16, 16) and out["masks"].shape == (2, 3, 16, 16)
    torch.testing.assert_close(out["masks"].sum(1), torch.ones(2, 16, 16))
    torch.testing.assert_close(out["z"], out["mean"])  # evaluation decodes the posterior mean
    pixels = torch.tensor([0, 17, 255, 100])
    part = model(image, pixels)
    torch.testing.assert_close(part["recon"], out["recon"].flatten(2)[:, :, pixels])
    torch.testing.assert_close(part["masks"], out["masks"].flatten(2)[:, :, pixels])
    model.train()
    sample = model(image)["z"]
    assert not torch.allclose(sample, out["mean"])  # training samples the posterior


def test_penalty_and_kl_by_hand():
    masks = torch.tensor([[0.5, 1.0], [0.25, 0.0], [0.25, 0.0]]).reshape(1, 3, 1, 2)
    # pixel 1: 0.5*0.25 + 0.5*0.25 + 0.25*0.25 = 0.3125; pixel 2: 0
    torch.testing.assert_close(interaction_penalty(masks), torch.tensor([0.3125 / 2]))
    mean, log_var = torch.randn(2, 3, 4), torch.randn(2, 3, 4)
    q = torch.distributions.Normal(mean, (0.5 * log_var).exp())
    p = torch.distributions.Normal(torch.zeros_like(mean), torch.ones_like(mean))
    torch.testing.assert_close(gaussian_kl(mean, log_var), torch.distributions.kl_divergence(q, p).sum((1, 2)))


def test_alpha_and_beta_ramp_linearly():
    app = load_application(APP_DIR)
    cfg = app.make_config("cpu", ["alpha_start=100", "alpha_ramp=200", "beta_warmup=50"])
    assert schedule(0, cfg) == (0.0, 0.0)
    assert schedule(200, cfg) == pytest.approx((0.025, 0.05))
    assert schedule(10_000, cfg) == pytest.approx((0.05, 0.05))
    alpha0, beta0, cpu = app.make_config("alpha0"), app.make_config("beta0"), app.make_config("cpu")
    assert (alpha0.alpha, alpha0.beta, beta0.alpha, beta0.beta) == (0.0, cpu.beta, cpu.alpha, 0.0)
    assert alpha0.data == cpu.data and beta0.num_slots == cpu.num_slots  # otherwise the cpu preset


def test_training_step_counter_drives_the_schedule():
    app = load_application(APP_DIR)
    cfg = app.make_config("smoke")
    model = app.build_model(cfg)
    batch = render_batch(cfg.data, "train", [0, 1, 2, 3])
    _, logs = app.loss(model, batch, cfg)
    assert logs["alpha"] == 0.0 and int(model.step) == 1
    for _ in range(4):
        _, logs = app.loss(model, batch, cfg)
    assert logs["alpha"] == pytest.approx(cfg.alpha) and int(model.step) == 5
    assert "step" in model.state_dict()  # saved with the weights, so a resumed run keeps its schedule


def test_cli_trains_and_evaluates_the_smoke_preset(tmp_path):
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", APP_DIR, "--preset", "smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert "training finished" in result.stdout
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    final = records[-1]["eval"]
    assert {"fg_ari", "j_ari", "jis", "mse", "R"} <= set(final)
    assert 0 <= final["jis"] <= 1 and 0 < final["mse"] < 1
    assert {"mse", "kl", "R", "alpha", "beta"} <= set(records[-1]["metrics"])
    assert list((out / "images").glob("step_*.png"))
    evaluated = runner.invoke(cli, ["eval", str(out / "checkpoints" / "last.safetensors"), "--split", "test"])
    assert evaluated.exit_code == 0, evaluated.output
    assert "j_ari" in evaluated.stdout and "jis" in evaluated.stdout and "fg_ari" in evaluated.stdout


@pytest.mark.parametrize("sets, message", [
    (["train_pixels=0"], "train_pixels"),
    (["attn_scale=0"], "attn_scale"),
    (["dim=30", "heads=4"], "divisible"),
    (["num_slots=0"], "num_slots"),
])
def test_impossible_configs_fail_before_training(sets, message):
    with pytest.raises(ConfigError, match=message):
        load_application(APP_DIR).make_config("cpu", sets)


def test_bad_config_on_the_command_line_is_one_line(tmp_path):
    result = runner.invoke(cli, ["train", APP_DIR, "--preset", "smoke", "--set", "alpha=-1", "--out", str(tmp_path)])
    assert result.exit_code != 0
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "alpha" in lines[0], result.stderr


def test_benchmark_scores_both_applications_on_the_same_images(tmp_path):
    """The comparison script, on smoke runs of this app and of slot attention (same smoke data): table, JSON
    with every metric, the forward-mode Jacobian agreeing with central differences, and the picture."""
    import os
    import subprocess
    import sys

    for name, app_dir in (("ia", APP_DIR), ("sa", str(ROOT / "applications" / "slot_attention"))):
        result = runner.invoke(cli, ["train", app_dir, "--preset", "smoke", "-q", "--out", str(tmp_path / name)])
        assert result.exit_code == 0, result.output
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / "interaction_asymmetry.py"), "--runs", f"ia={tmp_path / 'ia'}",
         f"implicit={tmp_path / 'sa'}", f"implicit-s1={tmp_path / 'sa'}", "--images", "8", "--jacobian-images", "2",
         "--json", str(tmp_path / "b.json"),
         "--plot", str(tmp_path / "b.png")], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    written = json.loads((tmp_path / "b.json").read_text())
    results = written["results"]
    assert set(results) == {"ia", "implicit", "implicit-s1"}
    # runs named NAME and NAME-sK are the seeds of one configuration: their mean and sd
    assert set(written["groups"]) == {"implicit"}  # one run of the VAE: no spread, no group
    group = written["groups"]["implicit"]
    assert group["runs"] == ["implicit", "implicit-s1"]
    assert group["fg_ari"]["values"] == [results["implicit"]["fg_ari"], results["implicit-s1"]["fg_ari"]]
    for row in results.values():
        assert row["finite_difference_agrees"] and row["steps"] == 6
        assert set(row["trained_by"]) >= {"commit", "versions"}  # the training's block, for the docs check
        assert {"fg_ari", "j_ari", "jis", "mse", "jacobian_forward_s_per_image"} <= set(row)
    assert (tmp_path / "b.png").stat().st_size > 0
