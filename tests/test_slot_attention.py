"""Slot attention application: the autoencoder assembles the core's modules, trains end to end through
the trainer under every gradient estimator, rejects impossible configs, and still loads checkpoints
written before its modules moved to deqkit.nn."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch

from applications.slot_attention.model import SlotAutoencoder
from deqkit.train import load_application, train
from deqkit.train.evaluate import evaluate
from deqkit.train.restore import restore

torch.set_num_threads(1)
DATA = Path(__file__).parent / "data"


@pytest.mark.parametrize("backward", ["unrolled", "neumann", "ift", "phantom"])
def test_autoencoder_outputs_and_every_backward_trains(backward):
    torch.manual_seed(0)
    model = SlotAutoencoder(16, num_slots=3, slot_dim=8, channels=8, mlp_hidden=8, encoder_layers=2,
                            encoder_kernel=3, decoder_grid=4, backward=backward)
    image = torch.rand(2, 3, 16, 16)
    out = model(image)
    assert out["recon"].shape == (2, 3, 16, 16) and out["masks"].shape == (2, 3, 16, 16)
    assert out["rgb"].shape == (2, 3, 3, 16, 16) and out["attn"].shape == (2, 3, 256)
    torch.testing.assert_close(out["masks"].sum(1), torch.ones(2, 16, 16))
    torch.testing.assert_close(out["recon"], (out["masks"].unsqueeze(2) * out["rgb"]).sum(1))
    (out["recon"] - image).square().mean().backward()
    assert model.encoder.cnn[0].weight.grad.abs().sum() > 0


def test_smoke_preset_trains_through_the_trainer(tmp_path):
    app = load_application("applications/slot_attention")
    assert app.default_preset == "cpu" and {"smoke", "cpu", "paper"} <= set(app.presets)
    config = app.make_config("smoke")
    result = train(app, config, tmp_path / "run", preset="smoke")
    assert result.step == config.train.steps and result.checkpoint.exists()
    assert {"fg_ari", "ari", "miou", "mse"} <= set(result.metrics)
    assert 0.0 <= result.metrics["mse"] < 1.0 and -1.0 <= result.metrics["fg_ari"] <= 1.0
    assert list((tmp_path / "run" / "images").glob("step_*.png"))
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
    assert any("solver" in r for r in records)


def test_presets_resolve_and_unknown_keys_are_errors():
    app = load_application("applications/slot_attention")
    paper = app.make_config("paper")
    assert (paper.data.image_size, paper.num_slots, paper.iters, paper.train.lr, paper.train.warmup) == \
        (128, 7, 3, 4e-4, 10_000)
    assert app.make_config("cpu", ["backward=unrolled"]).backward == "unrolled"
    with pytest.raises(ValueError, match="unknown config key"):
        app.make_config("cpu", ["slots=3"])


def test_reference_options_reach_the_model_and_the_metrics_report_undefined_fg_ari():
    app = load_application("applications/slot_attention")
    cfg = app.make_config("smoke", ["init=gaussian", "layer_norm_eps=1e-3", "gaussian_init=keras_glorot"])
    model = app.build_model(cfg)
    sa = model.slot_attention
    assert sa.norm_inputs.eps == sa.step.norm_slots.eps == sa.step.norm_mlp.eps == 1e-3
    assert sa.mu.abs().max() <= (6 / (1 + cfg.slot_dim)) ** 0.5  # glorot, not N(0, 1)
    assert app.build_model(app.make_config("smoke")).slot_attention.norm_inputs.eps == 1e-5
    with pytest.raises(ValueError, match="layer_norm_eps"):
        app.make_config("smoke", ["layer_norm_eps=0"])
    batch = torch.utils.data.default_collate([app.build_dataset(cfg, "val")[i] for i in range(4)])
    values = app.metrics(model, batch, cfg)
    assert set(values["fg_ari_undefined"].tolist()) <= {0.0, 1.0} and values["fg_ari_undefined"].shape == (4,)


def test_the_adjoint_solver_option_reaches_ift_and_broyden_gives_the_gmres_gradient():
    """Chang et al.'s Table 2 solves the IFT adjoint by Broyden: ``ift_solver``/``ift_iters`` choose it."""
    app = load_application("applications/slot_attention")
    torch.manual_seed(0)
    image = torch.rand(2, 3, 16, 16)
    grads = {}
    for solver in ("gmres", "broyden"):
        cfg = app.make_config("smoke", ["backward=ift", f"ift_solver={solver}", "ift_iters=40"])
        torch.manual_seed(0)
        model = app.build_model(cfg)
        assert model.slot_attention.fixed_point.backward.solver == solver
        assert model.slot_attention.fixed_point.backward.max_iter == 40
        model.encoder.zero_grad()
        app.loss(model, {"image": image}, cfg)[0].backward()
        grads[solver] = torch.cat([p.grad.flatten() for p in model.slot_attention.parameters()])
    assert torch.allclose(grads["broyden"], grads["gmres"], rtol=1e-3, atol=1e-6)
    assert app.make_config("smoke").ift_solver == "gmres"
    with pytest.raises(ValueError, match="ift_solver"):
        app.make_config("smoke", ["ift_solver=newton"])


@pytest.mark.parametrize("decoder", ["conv", "mlp"])
def test_both_decoders_give_masks_that_partition_each_pixel(decoder):
    torch.manual_seed(0)
    model = SlotAutoencoder(16, num_slots=3, slot_dim=8, channels=8, mlp_hidden=8, encoder_layers=2,
                            encoder_kernel=3, decoder_grid=8, decoder=decoder, init="learned")
    out = model(torch.rand(2, 3, 16, 16))
    assert out["rgb"].shape == (2, 3, 3, 16, 16)
    torch.testing.assert_close(out["masks"].sum(1), torch.ones(2, 16, 16))
    with pytest.raises(ValueError, match="unknown decoder"):
        SlotAutoencoder(16, decoder="deconv")


def test_relative_positions_work_end_to_end_and_need_the_mlp_decoder():
    torch.manual_seed(0)
    model = SlotAutoencoder(16, num_slots=3, slot_dim=8, channels=8, mlp_hidden=8, encoder_layers=2,
                            encoder_kernel=3, encoder_downsample=1, decoder_grid=8, decoder="mlp",
                            decoder_positions="relative", init="learned")
    out = model(torch.rand(2, 3, 16, 16))
    torch.testing.assert_close(out["masks"].sum(1), torch.ones(2, 16, 16))
    out["recon"].square().mean().backward()
    assert model.slot_attention.step.to_q.weight.grad.abs().sum() > 0  # also through the frames
    with pytest.raises(ValueError, match="decoder_positions"):
        SlotAutoencoder(16, decoder="conv", decoder_positions="relative")


@pytest.mark.parametrize("sets, message", [
    (["decoder_positions=relative", "decoder=conv"], "needs decoder=mlp"),
    (["decoder_grid=24"], "times a power of 2"),
    (["encoder_downsample=5"], "encoder_downsample"),
    (["num_slots=0"], "num_slots"),
])
def test_impossible_model_configs_fail_before_training(sets, message):
    from deqkit.train import ConfigError

    with pytest.raises(ConfigError, match=message):
        load_application("applications/slot_attention").make_config("cpu", sets)


@pytest.mark.slow
def test_cpu_preset_discovers_objects_in_2000_steps(tmp_path):
    """~5 minutes: the README's model, shortened, separates objects well above chance (measured 0.75)."""
    app = load_application("applications/slot_attention")
    config = app.make_config("cpu", ["train.steps=2000", "train.eval_every=0", "train.ckpt_every=0",
                                     "train.image_every=0"])
    result = train(app, config, tmp_path / "run", preset="cpu")
    assert result.metrics["fg_ari"] >= 0.6, result.metrics


def test_a_checkpoint_written_before_the_move_to_deqkit_nn_loads_and_scores_the_same():
    """tests/data holds a smoke-preset checkpoint trained (and evaluated) by deqkit 0.1.0, when slot
    attention lived in this application: its weights fit today's model and give the same test metrics."""
    restored = restore(DATA / "slot_attention_smoke_v0.1.0.safetensors")
    recorded = json.loads((DATA / "slot_attention_smoke_v0.1.0.eval.json").read_text())["metrics"]
    metrics = evaluate(restored.app, restored.model, restored.config, "test", torch.device("cpu"))
    for name, value in recorded.items():
        assert metrics[name] == pytest.approx(value, rel=1e-5, abs=1e-6), name
