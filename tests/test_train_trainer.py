"""The trainer: exact resume, skipped non-finite steps, bf16 autocast, schedule, deterministic data."""

from __future__ import annotations

import dataclasses
import json
import math
import os
import signal
import warnings
from pathlib import Path

import pytest
import torch

from deqkit.train.application import load_application
from deqkit.train.checkpoint import load_checkpoint
from deqkit.train.config import TrainConfig
from deqkit.train.data import EpochBatches
from deqkit.train.errors import TrainingError
from deqkit.train.trainer import Interrupted, Reporter, Trainer, lr_factor, train

TOY = Path(__file__).resolve().parents[1] / "examples" / "toy_deq"
FAST = ["train.steps=16", "train.log_every=4", "train.eval_every=8", "train.ckpt_every=8", "train.spectral_iters=2",
        "train.num_threads=1"]


@pytest.fixture(scope="module")
def app():
    return load_application(TOY)


def _records(out: Path) -> list[dict]:
    drop = ("time", "steps_per_s")
    return [{k: v for k, v in json.loads(line).items() if k not in drop}
            for line in (out / "metrics.jsonl").read_text().splitlines()]


class _InterruptAt(Reporter):
    """Sends this process a SIGINT once training reaches ``step`` (like Ctrl-C)."""

    def __init__(self, step: int) -> None:
        self.step = step

    def advance(self, step: int, loss: float, rate: float) -> None:
        if step == self.step:
            os.kill(os.getpid(), signal.SIGINT)


def test_interrupted_and_resumed_run_equals_uninterrupted_run(app, tmp_path):
    config = app.make_config("smoke", FAST)
    whole = Trainer(app, config, tmp_path / "whole")
    result = whole.fit()
    with pytest.raises(Interrupted, match="interrupted at step 6; checkpoint saved"):
        train(app, config, tmp_path / "split", reporter=_InterruptAt(5))
    ckpt = load_checkpoint(tmp_path / "split" / "checkpoints" / "last.safetensors", app=app.name)
    assert ckpt.step == 6
    resumed = Trainer(app, config, tmp_path / "split", resume=ckpt)
    resumed_result = resumed.fit()
    for (name, a), b in zip(whole.model.state_dict().items(), resumed.model.state_dict().values()):
        assert torch.equal(a, b), name
    assert resumed_result.metrics == result.metrics
    assert _records(tmp_path / "whole") == _records(tmp_path / "split")
    state_a, state_b = whole.optimizer.state_dict()["state"], resumed.optimizer.state_dict()["state"]
    assert state_a.keys() == state_b.keys()
    for pid in state_a:
        assert all(torch.equal(state_a[pid][k], state_b[pid][k]) for k in state_a[pid])


def _nan_app(app, bad_calls):
    calls = {"n": 0}

    def loss(model, batch, cfg):
        calls["n"] += 1
        value, logs = app.loss(model, batch, cfg)
        return (value * math.nan if calls["n"] in bad_calls else value), logs

    return dataclasses.replace(app, name="toy_nan", loss=loss)


def test_non_finite_steps_are_skipped_counted_and_leave_weights_alone(app, tmp_path):
    messages = []

    class Collect(Reporter):
        def warn(self, message):
            messages.append(message)

    nan_app = _nan_app(app, bad_calls={3, 4})
    config = nan_app.make_config("smoke", FAST + ["train.steps=5", "train.spectral_iters=0"])
    trainer = Trainer(nan_app, config, tmp_path / "run", reporter=Collect())
    result = trainer.fit()
    assert result.skipped_steps == 2
    assert any("step 3: non-finite loss or gradient; step skipped (1 in a row, 1 in total)" in m for m in messages)
    assert _records(tmp_path / "run")[-1]["skipped_steps"] == 2


def test_gradient_nan_is_skipped_too(app, tmp_path):
    class NanGrad(torch.autograd.Function):
        @staticmethod
        def forward(ctx, x):
            return x.clone()

        @staticmethod
        def backward(ctx, grad):
            return grad * math.nan

    def loss(model, batch, cfg):
        x, y = batch
        logits = NanGrad.apply(model(x))
        return torch.nn.functional.cross_entropy(logits, y), {}

    bad = dataclasses.replace(app, loss=loss)
    config = bad.make_config("smoke", FAST + ["train.steps=3", "train.max_bad_steps=5", "train.spectral_iters=0"])
    trainer = Trainer(bad, config, None)
    before = [p.detach().clone() for p in trainer.model.parameters()]
    assert trainer.fit().skipped_steps == 3
    assert all(torch.equal(a, b) for a, b in zip(before, trainer.model.parameters()))


def test_a_skipped_first_step_steps_the_schedule_without_a_torch_warning(app):
    nan_app = _nan_app(app, bad_calls={1})
    config = nan_app.make_config("smoke", FAST + ["train.steps=2", "train.spectral_iters=0"])
    trainer = Trainer(nan_app, config, None)
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert trainer.fit().skipped_steps == 1
    assert not [w for w in caught if "lr_scheduler.step()" in str(w.message)]
    assert trainer.scheduler.last_epoch == 2  # the schedule still counts the skipped step


def test_weights_made_non_finite_by_a_step_stop_the_run_and_are_never_saved(app, tmp_path):
    # an application's own group lr is not a TrainConfig field: nothing validated it
    bad = dataclasses.replace(app, param_groups=lambda model, cfg: [{"params": list(model.parameters()),
                                                                      "lr": math.inf}])
    config = bad.make_config("smoke", FAST + ["train.ckpt_every=1"])
    with pytest.raises(TrainingError, match="step 1 made the weights non-finite"):
        train(bad, config, tmp_path / "run")
    assert not list((tmp_path / "run" / "checkpoints").glob("*.safetensors"))


def test_too_many_bad_steps_in_a_row_stop_training_and_keep_the_last_checkpoint(app, tmp_path):
    nan_app = _nan_app(app, bad_calls=set(range(10, 100)))
    config = nan_app.make_config("smoke", FAST + ["train.max_bad_steps=3", "train.spectral_iters=0"])
    with pytest.raises(TrainingError, match="stopping at step 12: 3 non-finite steps in a row"):
        train(nan_app, config, tmp_path / "run")
    assert load_checkpoint(tmp_path / "run" / "checkpoints" / "last.safetensors").step == 8


def test_bf16_autocast_path_trains_on_cpu(app):
    config = app.make_config("smoke", FAST + ["train.amp=bf16", "train.steps=4", "train.spectral_iters=0",
                                              "solver=iteration", "tol=1e-2"])
    result = Trainer(app, config, None).fit()
    assert result.step == 4 and math.isfinite(result.metrics["nll"])


def test_lr_schedule_warms_up_then_decays_to_zero():
    cfg = TrainConfig(steps=100, warmup=10, decay="cosine")
    assert lr_factor(0, cfg) == pytest.approx(0.1) and lr_factor(9, cfg) == pytest.approx(1.0)
    assert lr_factor(55, cfg) == pytest.approx(0.5) and lr_factor(100, cfg) == pytest.approx(0.0)
    assert lr_factor(50, TrainConfig(steps=100, decay="linear")) == pytest.approx(0.5)
    assert lr_factor(99, TrainConfig(steps=100, decay="none")) == 1.0


def test_data_order_is_a_function_of_seed_and_epoch_and_ranks_are_disjoint():
    one = EpochBatches(100, 10, seed=3)
    assert one.batches(2) == EpochBatches(100, 10, seed=3).batches(2)
    assert one.batches(2) != one.batches(3) and one.batches(2) != EpochBatches(100, 10, seed=4).batches(2)
    ranks = [EpochBatches(100, 10, seed=3, rank=r, world=2).batches(0) for r in range(2)]
    seen = [i for rank in ranks for batch in rank for i in batch]
    assert len(seen) == len(set(seen)) == 100


def test_summarize_hook_gets_every_batch_and_its_values_join_the_means(app, tmp_path):
    """A dataset-level metric (here: the accuracy of the pooled predictions, and the number of batches)
    is computed once from all batches; ``_`` entries feed it without being averaged."""
    from deqkit.train.evaluate import evaluate

    def metrics(model, batch, cfg):
        values = dict(app.metrics(model, batch, cfg))
        values["_ones"] = torch.ones(len(batch[1]), 3)  # not a per-sample vector: must not be averaged
        return values

    seen = []

    def summarize(outputs, cfg):
        seen.append(len(outputs))
        pooled = torch.cat([o["accuracy"] for o in outputs])
        return {"pooled_accuracy": pooled.mean(), "ones": torch.cat([o["_ones"] for o in outputs]).sum()}

    summarizing = dataclasses.replace(app, metrics=metrics, summarize=summarize)
    config = app.make_config("smoke", ["train.batch_size=24"])  # 64 eval samples: batches of 24, 24, 16
    values = evaluate(summarizing, summarizing.build_model(config), config, "val", torch.device("cpu"))
    assert seen == [3] and "_ones" not in values and values["samples"] == 64
    assert values["ones"] == 3 * 64
    assert values["pooled_accuracy"] == pytest.approx(values["accuracy"])
    result = train(summarizing, app.make_config("smoke", FAST), tmp_path / "run")  # the trainer's validation
    assert "pooled_accuracy" in result.metrics and "ones" in result.metrics


class _DirectSolve(torch.nn.Module):
    """The toy model's fixed point through a direct ``deqkit.fixed_point`` call instead of a FixedPoint layer."""

    def __init__(self, step: torch.nn.Module) -> None:
        super().__init__()
        self.step = step

    def forward(self, z0: torch.Tensor, u: torch.Tensor):
        import deqkit

        return deqkit.fixed_point(self.step, z0, inputs=(u,), solver="anderson", tol=1e-4, max_iter=30)


def test_direct_fixed_point_calls_are_logged_like_fixed_point_layers(app, tmp_path):
    def build_model(cfg):
        model = app.build_model(cfg)
        model.fp = _DirectSolve(model.fp.step)
        return model

    direct = dataclasses.replace(app, build_model=build_model)
    config = direct.make_config("smoke", FAST + ["train.steps=4", "train.eval_every=0"])
    train(direct, config, tmp_path / "run")
    logged = [r["solver"] for r in _records(tmp_path / "run") if "solver" in r]
    assert logged and all(set(s) == {"fixed_point[0]"} for s in logged)
    assert {"nfe", "residual", "residual_max", "converged"} <= set(logged[-1]["fixed_point[0]"])
    assert 1 <= logged[-1]["fixed_point[0]"]["nfe"] <= 30
