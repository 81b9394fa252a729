"""The optional ``Application.param_groups`` hook: per-group learning rates and warm-up reach AdamW and the
schedule, and groups that miss or repeat a parameter are refused with one line."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from deqkit.train.application import load_application
from deqkit.train.errors import ApplicationError
from deqkit.train.trainer import Trainer, lr_factor

TOY = Path(__file__).resolve().parents[1] / "examples" / "toy_deq"


def _app_with(groups):
    app = load_application(TOY)
    return dataclasses.replace(app, param_groups=groups)


def _head_and_rest(model, config):
    head = list(model.head.parameters())
    rest = [p for n, p in model.named_parameters() if not n.startswith("head.")]
    return [{"params": head, "lr": 3e-3, "warmup": 0}, {"params": rest}]


def test_groups_get_their_own_lr_and_warmup():
    app = _app_with(_head_and_rest)
    config = app.make_config("smoke", ["train.lr=1e-3", "train.warmup=4", "train.decay=linear", "train.steps=8"])
    trainer = Trainer(app, config, None)
    head, rest = trainer.optimizer.param_groups
    assert len(head["params"]) == len(list(trainer.model.head.parameters()))
    # step 0: the head group has no warm-up (full 3e-3 times the decay), the rest is at 1/4 of 1e-3
    assert head["lr"] == pytest.approx(3e-3 * lr_factor(0, dataclasses.replace(config.train, warmup=0)))
    assert rest["lr"] == pytest.approx(1e-3 * 0.25)
    for step in range(1, 6):
        trainer._step(False)
        trainer.step += 1
        assert head["lr"] == pytest.approx(3e-3 * (1 - step / 8))
        assert rest["lr"] == pytest.approx(1e-3 * min(1.0, (step + 1) / 4) * (1 - max(0, step - 4) / 4))


def test_default_is_one_group_at_train_lr():
    app = load_application(TOY)
    trainer = Trainer(app, app.make_config("smoke", ["train.warmup=0", "train.decay=none"]), None)
    (group,) = trainer.optimizer.param_groups
    assert group["lr"] == trainer.train_cfg.lr
    assert len(group["params"]) == len([p for p in trainer.model.parameters() if p.requires_grad])


@pytest.mark.parametrize("groups, message", [
    (lambda m, c: [{"params": list(m.head.parameters())}], "leaves out trainable parameters"),
    (lambda m, c: [{"params": list(m.parameters())}, {"params": list(m.head.parameters())}], "in groups 0 and 1"),
    (lambda m, c: [{"params": list(m.parameters()), "momentum": 0.9}], "may set lr, weight_decay, warmup"),
])
def test_bad_groups_are_refused(groups, message):
    app = _app_with(groups)
    with pytest.raises(ApplicationError, match=message):
        Trainer(app, app.make_config("smoke"), None)
