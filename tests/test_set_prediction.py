"""Set prediction application: targets from scenes, the matched loss against brute force, and the CLI end
to end (train, eval with AP at every threshold, diagnose) for slot attention, DSPN on images and DSPN on
random sets."""

from __future__ import annotations

import itertools
import json
import math

import pytest
import torch
from typer.testing import CliRunner

from applications.set_prediction.app import layout, targets
from applications.set_prediction.model import matched_loss, pair_losses, set_matched_smooth_l1
from deqkit.cli import app as cli
from deqkit.data import SceneDataset
from deqkit.data.scenes import PALETTE
from deqkit.train import load_application

torch.set_num_threads(1)
runner = CliRunner()
APP = "applications/set_prediction"


def test_targets_recover_palette_colours_and_size_classes():
    application = load_application(APP)
    cfg = application.make_config("smoke")
    batch = torch.utils.data.default_collate([SceneDataset(cfg.data, "val")[i] for i in range(6)])
    classes, xy, present = targets(batch, cfg)
    assert classes.shape == (6, cfg.num_slots, 3) and present.sum() == batch["present"].sum()
    real = batch["present"]
    colour = torch.as_tensor(PALETTE)[classes[..., 1][:, :real.shape[1]][real]]
    torch.testing.assert_close(colour, batch["color"][real])  # the class is the palette entry itself
    sizes = torch.as_tensor(cfg.data.size_values)[classes[..., 2][:, :real.shape[1]][real]]
    torch.testing.assert_close(sizes, batch["size"][real])
    assert (classes[~present] == -1).all() and layout(cfg).width == 2 + 3 + 8 + 2 + 1


def test_matched_losses_equal_the_best_permutation():
    torch.manual_seed(0)
    cost = torch.rand(2, 4, 4)
    brute = torch.stack([min(sum(cost[b, i, p[i]] for i in range(4)) for p in itertools.permutations(range(4)))
                         for b in range(2)]) / 4
    torch.testing.assert_close(matched_loss(cost), brute)
    x = torch.randn(3, 5, 2)
    assert set_matched_smooth_l1(x[:, torch.randperm(5)], x).abs().max() == 0


def test_pair_loss_of_a_perfect_confident_prediction_is_near_zero():
    cfg = load_application(APP).make_config("smoke")
    lay = layout(cfg)
    classes = torch.tensor([[[0, 3, 1], [-1, -1, -1]]])
    xy, present = torch.tensor([[[0.3, 0.6], [0.0, 0.0]]]), torch.tensor([[True, False]])
    rows = torch.full((1, 2, lay.width), -20.0)
    rows[0, 0, :2] = xy[0, 0]
    rows[0, 0, 2 + 0] = rows[0, 0, 2 + 3 + 3] = rows[0, 0, 2 + 3 + 8 + 1] = 20.0
    rows[0, 0, -1] = 20.0  # present; row 1 stays absent
    cost = pair_losses(rows, lay, classes, xy, present, cfg.coord_weight)
    assert matched_loss(cost).item() < 1e-6 and cost[0, 1, 0] > 10  # the absent row is a bad match


@pytest.mark.parametrize("preset,keys", [
    ("smoke", ["ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125", "count_accuracy"]),
    ("smoke_dspn", ["ap_inf", "ap_0.125"]),
    ("smoke_sets", ["set_loss", "baseline_loss", "baseline_ratio"]),
])
def test_cli_train_eval_diagnose(tmp_path, preset, keys):
    out = tmp_path / preset
    result = runner.invoke(cli, ["train", APP, "--preset", preset, "--out", str(out)])
    assert result.exit_code == 0, result.output
    ckpt = out / "checkpoints" / "last.safetensors"
    assert list((out / "images").glob("step_*.png"))
    result = runner.invoke(cli, ["eval", str(ckpt), "--json", "--set", "test_iters=5"])
    assert result.exit_code == 0, result.output
    metrics = json.loads(result.output)["metrics"]
    assert set(keys) <= set(metrics) and not any(k.startswith("_") for k in metrics)
    for key in keys:
        assert math.isfinite(metrics[key])
        if key.startswith("ap_"):
            assert 0.0 <= metrics[key] <= 1.0
    report = tmp_path / "diagnose.json"
    result = runner.invoke(cli, ["diagnose", str(ckpt), "--batches", "1", "--out", str(report)])
    assert result.exit_code == 0, result.output
    figures = json.loads(report.read_text())
    assert -1.0 <= figures["gradient_cosine"] <= 1.0
    (name, fp), = figures["fixed_points"].items()
    assert fp["spectral_norm_mean"] > 0 and fp["nfe"] >= 3


def test_impossible_configs_are_one_line_errors(tmp_path):
    result = runner.invoke(cli, ["train", APP, "--preset", "smoke", "--set", "num_slots=2", "--out", str(tmp_path)])
    assert result.exit_code == 2 and "num_slots" in result.output
    result = runner.invoke(cli, ["train", APP, "--preset", "smoke_sets", "--set", "decoder=slot_attention",
                                 "--out", str(tmp_path)])
    assert result.exit_code == 2 and "decoder=dspn" in result.output


@pytest.mark.slow
def test_benchmark_backward_part_unrolled_memory_grows_and_implicit_stays(tmp_path):
    import subprocess
    import sys
    from pathlib import Path

    root = Path(__file__).resolve().parents[1]
    out = tmp_path / "bench.json"
    subprocess.run([sys.executable, str(root / "benchmarks" / "set_prediction.py"), "--quick", "--parts", "backward",
                    "--json", str(out)], check=True, capture_output=True, cwd=tmp_path)
    rows = json.loads(out.read_text())["results"]["backward"]
    for task in ("properties", "random_sets"):
        saved = {(r["backward"], r["iters"]): r["saved_mb"] for r in rows if r["task"] == task}
        assert saved[("unrolled", 40)] > 2 * saved[("unrolled", 10)]
        assert saved[("neumann", 40)] < 1.5 * saved[("neumann", 10)] < saved[("unrolled", 10)]
