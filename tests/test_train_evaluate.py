"""deqkit.train.evaluate: metrics must be one value per sample, checked once per evaluation."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
import torch

from deqkit.train.application import load_application
from deqkit.train.errors import ApplicationError
from deqkit.train.evaluate import evaluate

TOY = Path(__file__).resolve().parents[1] / "examples" / "toy_deq"


@pytest.fixture(scope="module")
def app():
    return load_application(TOY)


@pytest.mark.parametrize("reduce, shape", [(lambda v: v.mean(), "[]"), (lambda v: v.repeat(2), "[48]"),
                                           (lambda v: v[:, None].expand(-1, 3), "[24, 3]")])
def test_a_metric_that_is_not_one_value_per_sample_is_an_application_error(app, reduce, shape):
    def metrics(model, batch, cfg):
        values = dict(app.metrics(model, batch, cfg))
        values["accuracy"] = reduce(values["accuracy"])
        return values

    broken = dataclasses.replace(app, metrics=metrics)
    config = app.make_config("smoke", ["train.batch_size=24"])
    with pytest.raises(ApplicationError) as err:
        evaluate(broken, broken.build_model(config), config, "val", torch.device("cpu"))
    assert (f"metrics()['accuracy'] has shape {shape} for a batch of 24 samples; metrics must return one value "
            f"per sample") in str(err.value)


def test_per_sample_metrics_and_underscore_entries_pass(app):
    def metrics(model, batch, cfg):
        values = app.metrics(model, batch, cfg)
        # `_` keys feed summarize only; a metric may cover the first n samples of a batch (an expensive one)
        return {**values, "_pooled": torch.zeros(3), "first_two": values["accuracy"][:2]}

    config = app.make_config("smoke", ["train.batch_size=24"])
    ok = dataclasses.replace(app, metrics=metrics)
    values = evaluate(ok, ok.build_model(config), config, "val", torch.device("cpu"))
    assert values["samples"] == 64 and 0 <= values["accuracy"] <= 1 and 0 <= values["first_two"] <= 1
