"""SLATE application: the model's gradients go where the paper says (no gradient from the transformer into
the dVAE), the dVAE trains at its own lr, generation with the cache reconstructs the same image as without,
and `deqkit train slate` / `eval` / `diagnose` work end to end from the command line."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from applications.slate.app import APP, build_dataset, metrics
from applications.slate.fid import main as fid_main
from applications.slate.fid import slot_fid
from applications.slate.model import Slate, slate_loss
from deqkit.cli.main import app as cli

torch.set_num_threads(1)


def _model(backward: str = "neumann", **kw) -> Slate:
    torch.manual_seed(0)
    return Slate(16, vocab_size=8, patch=4, dvae_hidden=8, d_model=16, num_heads=2, num_blocks=1, num_slots=3,
                 slot_dim=8, mlp_hidden=8, backward=backward, tau=(1.0, 0.1, 10), **kw)


VARIANTS = [{}, {"decoder": "mixture", "slot_positions": "soft", "token_convs": 1}, {"context_dropout": 0.5}]


@pytest.mark.parametrize("variant", VARIANTS, ids=["gpt", "mixture-soft", "context-dropout"])
@pytest.mark.parametrize("backward", ["unrolled", "neumann"])
def test_cross_entropy_does_not_reach_the_dvae_and_mse_does_not_reach_the_rest(backward, variant):
    model = _model(backward, **variant)
    image = torch.rand(2, 3, 16, 16)
    out = model(image)
    assert out["logits"].shape == (2, 16, 8) and out["attn"].shape == (2, 3, 16)
    ce = torch.nn.functional.cross_entropy(out["logits"].flatten(0, 1), out["tokens"].flatten())
    ce.backward()
    assert all(p.grad is None for p in model.dvae.parameters())
    assert model.slot_attention.step.to_q.weight.grad.abs().sum() > 0
    if model.slot_positions is not None:  # the soft positions reach slot attention
        assert model.slot_positions.proj.weight.grad.abs().sum() > 0
    if model.token_convs is not None:  # and so does the convolution over the token grid
        assert model.token_convs[0].weight.grad.abs().sum() > 0
    model.zero_grad()
    out = model(image)
    (out["dvae"]["recon"] - image).square().sum().backward()
    assert all(p.grad is None for n, p in model.named_parameters() if not n.startswith("dvae."))


def test_loss_is_per_image_sums_and_advances_the_temperature():
    model = _model()
    image = torch.rand(2, 3, 16, 16)
    taus = []
    for _ in range(3):
        out = model(image)
        loss, logs = slate_loss(model, out, image)
        taus.append(logs["tau"])
        mse = (out["dvae"]["recon"] - image).square().sum().item() / 2
        assert logs["dvae_mse"] == pytest.approx(mse, rel=1e-5)
        assert loss.item() == pytest.approx(mse + logs["ce_per_token"] * 16, rel=1e-5)
    assert int(model.step) == 3 and taus[0] > taus[1] > taus[2]
    model.eval()
    slate_loss(model, model(image), image)
    assert int(model.step) == 3  # evaluation does not move the schedule


def test_generation_with_and_without_cache_reconstructs_the_same_image():
    model = _model().eval()
    slots = model(torch.rand(2, 3, 16, 16))["slots"] * 4
    fast, slow = model.reconstruct(slots, use_cache=True), model.reconstruct(slots, use_cache=False)
    assert fast.shape == (2, 3, 16, 16)
    torch.testing.assert_close(fast, slow)


def test_the_dvae_has_its_own_learning_rate_and_no_warmup():
    config = APP.make_config("cpu")
    groups = APP.param_groups(APP.build_model(config), config)
    assert (groups[0]["lr"], groups[0]["warmup"]) == (config.dvae_lr, 0) and "lr" not in groups[1]
    paper = APP.make_config("paper")
    assert (paper.dvae_lr, paper.train.lr, paper.train.warmup, paper.train.grad_clip) == (3e-4, 1e-4, 30_000, 1.0)
    assert (paper.d_model, paper.vocab_size, paper.data.image_size, paper.tau_steps) == (192, 1024, 128, 30_000)


def test_folder_images_without_masks_score_without_fg_ari(tmp_path):
    rng = np.random.default_rng(0)
    for i in range(10):
        Image.fromarray(rng.integers(0, 255, (20, 20, 3), dtype=np.uint8)).save(tmp_path / f"{i}.png")
    config = APP.make_config("smoke", [f"folder={tmp_path}"])
    data = build_dataset(config, "train")
    batch = {"image": torch.stack([data[i]["image"] for i in range(len(data))])}
    model = APP.build_model(config).eval()
    scores = metrics(model, batch, config)
    assert set(scores) == {"ce", "ce_other_slots", "dvae_mse", "mse"} and scores["mse"].shape == (len(data),)


def test_cli_train_eval_diagnose_end_to_end(tmp_path):
    runner = CliRunner()
    out = tmp_path / "run"
    result = runner.invoke(cli, ["train", "slate", "--preset", "smoke", "--out", str(out)])
    assert result.exit_code == 0, result.output
    assert (out / "checkpoints" / "last.safetensors").exists() and list((out / "images").glob("step_*.png"))
    ckpt = str(out / "checkpoints" / "last.safetensors")
    result = runner.invoke(cli, ["eval", ckpt, "--json"])
    assert result.exit_code == 0, result.output
    scores = json.loads(result.stdout)["metrics"]
    assert {"ce", "mse", "dvae_mse", "fg_ari", "miou"} <= set(scores)
    assert 0 < scores["ce"] < np.log(16) + 1 and -1 <= scores["fg_ari"] <= 1
    result = runner.invoke(cli, ["diagnose", ckpt, "--batches", "1", "--out", str(tmp_path / "d.json")])
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d.json").read_text())
    fp = report["fixed_points"]["slot_attention.fixed_point"]
    assert fp["spectral_norm_max"] > 0 and -1 <= report["gradient_cosine"] <= 1
    fid = slot_fid(ckpt, split="val", batches=2)
    assert fid["fid_slots"] >= 0 and fid["extractor"] == "small-random-cnn"
    assert fid_main([ckpt, "--inception-weights", str(tmp_path / "missing.pth")]) == 2


def test_benchmark_cost_and_token_grid_ceiling():
    import argparse

    from benchmarks.slate import part_cost, token_grid_ceiling

    result = part_cost(argparse.Namespace(quick=True, plots=None))
    assert result["generation"]["identical_tokens"]
    saved = {(r["backward"], r["iters"]): r["slot_attention_saved_mb"] for r in result["rows"]}
    assert saved[("neumann", 3)] == pytest.approx(saved[("neumann", 1)])  # O(1) memory in the iterations
    assert saved[("unrolled", 3)] > 1.3 * saved[("unrolled", 1)]
    # objects aligned with the 4x4 cells are recovered exactly; a one-pixel-wide object across cells is not
    mask = torch.zeros(1, 8, 8, dtype=torch.long)
    mask[0, :4, :4], mask[0, 4:, :] = 1, 2
    assert token_grid_ceiling(mask, 4).item() == pytest.approx(1.0)
    mask[0, 0, 3:5] = 3  # two pixels split over two cells: in the first one object 1 outvotes it
    assert token_grid_ceiling(mask, 4).item() < 1.0


def test_mixture_decoder_generates_its_argmax_and_scores_its_own_masks():
    config = APP.make_config("smoke", ["decoder=mixture", "slot_positions=soft"])
    data = build_dataset(config, "val")
    batch = {key: torch.stack([data[i][key] for i in range(4)]) for key in ("image", "mask")}
    model = APP.build_model(config).eval()
    out = model(batch["image"])
    assert out["decoder_masks"].shape == out["masks"].shape
    tokens = out["logits"].argmax(-1).unflatten(1, (model.grid, model.grid))
    torch.testing.assert_close(model.reconstruct(out["slots"]), model.dvae.decode_tokens(tokens))
    scores = metrics(model, batch, config)
    assert {"fg_ari", "fg_ari_decoder", "ce_other_slots"} <= set(scores)


def test_report_summarises_seeds_and_calls_a_gap_within_the_spread_no_difference():
    from benchmarks.slate import group_differences, seed_groups

    def run(backward, seed, fg, mse):
        test = {"ce": 0.7, "ce_other_slots": 1.5, "mse": mse, "fg_ari": fg, "miou": 0.2}
        return {"backward": backward, "iters": 3, "grad_clip": 1.0, "warmup": 200, "steps": 6000, "seed": seed,
                "test": test, "fid_slots": 0.3}

    runs = {f"{b}-s{s}": run(b, s, fg, mse) for b, fgs, mses in
            (("unrolled", (0.40, 0.50, 0.45), (330, 340, 335)), ("neumann", (0.42, 0.52, 0.44), (300, 302, 301)))
            for s, fg, mse in zip(range(3), fgs, mses)}
    runs["neumann-iters7"] = {**run("neumann", 0, 0.9, 100), "iters": 7}  # a lone setting forms no group
    groups = seed_groups(runs)
    assert len(groups) == 2
    g = groups["unrolled iters=3 clip=1.0 warmup=200 steps=6000"]
    assert g["seeds"] == [0, 1, 2] and g["fg_ari"]["mean"] == pytest.approx(0.45)
    assert g["fg_ari"]["sd"] == pytest.approx(0.05)
    verdict = {r["metric"]: r["difference"] for r in group_differences(groups)}
    assert verdict["fg_ari"] is False and verdict["mse"] is True and verdict["ce"] is False


@pytest.mark.parametrize("preset, backward", [("paper", "unrolled"), ("paper_implicit", "neumann")])
def test_paper_presets_resolve_build_and_run_a_step(preset, backward):
    cfg = APP.make_config(preset)
    assert cfg.backward == backward and cfg.solver == "iteration" and cfg.masks == "last_iteration"
    assert (cfg.train.decay, cfg.train.warmup, cfg.train.lr, cfg.dvae_lr, cfg.train.grad_clip) == ("none", 30_000, 1e-4,
                                                                                                   3e-4, 1.0)
    model = APP.build_model(cfg)
    assert sum(isinstance(m, torch.nn.GroupNorm) for m in model.dvae.modules()) == 7 + 1 + 2 * 4  # SLATE's blocks
    assert not any(isinstance(m, torch.nn.GELU) for m in model.gpt.modules())
    assert sum(isinstance(m, torch.nn.ReLU) for m in model.gpt.modules()) == cfg.num_blocks
    # one training step of the same model on 16 px images (the full size is for a GPU)
    small = APP.make_config(preset, ["data.image_size=16", "data.train_size=8", "train.batch_size=2"])
    torch.manual_seed(0)
    model = APP.build_model(small)
    batch = torch.utils.data.default_collate([build_dataset(small, "train")[i] for i in range(2)])
    loss, logs = APP.loss(model, batch, small)
    loss.backward()
    assert torch.isfinite(loss) and model.slot_attention.to_k.weight.grad is not None
    # vanilla backpropagates into the Gaussian start through the iterations; implicit detaches the start
    assert (model.slot_attention.mu.grad is not None) == (backward == "unrolled")


@pytest.mark.parametrize("init", ["learned", "gaussian"])
def test_last_iteration_masks_are_the_attention_of_the_slots_before_the_last_update(init):
    cfg = APP.make_config("smoke", [f"init={init}", "masks=last_iteration", "iters=3", "backward=unrolled"])
    torch.manual_seed(0)
    model = APP.build_model(cfg).eval()
    sa = model.slot_attention
    image = torch.utils.data.default_collate([build_dataset(cfg, "val")[i] for i in range(2)])["image"]
    with torch.no_grad():
        torch.manual_seed(5)  # in eval mode the Gaussian start is the forward's only random draw
        out = model(image)
        torch.manual_seed(5)
        noise = torch.randn(2, sa.num_slots, sa.slot_dim)
        inputs = model.slot_features(out["tokens"])
        start = sa.initial_slots(2, noise)
        before_last = sa.iterate(inputs, start, 2)
        torch.testing.assert_close(sa.iterate(inputs, before_last, 1), out["slots"])
        torch.testing.assert_close(out["masks"], sa.masks(inputs, before_last))
        assert not torch.allclose(out["masks"], sa.masks(inputs, out["slots"]), atol=1e-4)  # not the final ones
    with pytest.raises(ValueError, match="last_iteration"):
        APP.make_config("smoke", ["masks=last_iteration", "solver=anderson"])
