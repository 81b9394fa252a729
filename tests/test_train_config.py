"""Configs: typed --set overrides, presets, and one-line errors for unknown keys and bad values."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass, field
from typing import Literal, Optional

import pytest

from deqkit.train.config import (MAX_ITERATIONS, DatasetSize, Dim, Iterations, TrainConfig, config_keys, from_dict,
                                 resolve_config, to_dict)
from deqkit.train.errors import ConfigError


@dataclass
class Inner:
    size: int = 4
    scale: float = 1.0


@dataclass
class Cfg:
    train: TrainConfig = field(default_factory=TrainConfig)
    inner: Inner = field(default_factory=Inner)
    name: str = "x"
    flag: bool = False
    mode: Literal["a", "b"] = "a"
    clip: Optional[float] = None
    shape: tuple[int, ...] = (1, 2)
    pair: tuple[int, float] = (1, 2.0)


def test_set_strings_are_parsed_by_field_type():
    cfg = resolve_config(Cfg, sets=["train.lr=3e-4", "train.steps=1e3", "inner.size=7", "flag=yes",
                                    "mode=b", "clip=0.5", "shape=3,4,5", "pair=(2, 0.5)", "name=hello=1"])
    assert cfg.train.lr == 3e-4 and cfg.train.steps == 1000 and cfg.inner.size == 7
    assert cfg.flag is True and cfg.mode == "b" and cfg.clip == 0.5
    assert cfg.shape == (3, 4, 5) and cfg.pair == (2, 0.5) and cfg.name == "hello=1"
    assert resolve_config(Cfg, base=cfg, sets=["clip=none"]).clip is None


def test_presets_accept_nested_and_dotted_keys_and_sets_win():
    cfg = resolve_config(Cfg, overrides={"train": {"steps": 5}, "inner.scale": 2}, sets=["train.steps=6"])
    assert cfg.train.steps == 6 and cfg.inner.scale == 2.0 and isinstance(cfg.inner.scale, float)


def test_unknown_key_names_it_and_lists_valid_keys_in_one_line():
    with pytest.raises(ConfigError) as err:
        resolve_config(Cfg, sets=["train.lrr=1"])
    message = str(err.value)
    assert "unknown config key 'train.lrr'" in message and "train.lr" in message and "inner.size" in message
    assert "\n" not in message
    with pytest.raises(ConfigError, match="unknown config key 'nope'"):
        resolve_config(Cfg, overrides={"nope": 1})
    with pytest.raises(ConfigError, match="unknown config key 'name.x'"):
        resolve_config(Cfg, sets=["name.x=1"])


@pytest.mark.parametrize("item, expected", [
    ("train.steps=ten", "expected int"), ("train.steps=1.5", "expected int"), ("flag=maybe", "expected bool"),
    ("mode=c", "one of a|b"), ("clip=big", "float or none"), ("pair=1", "tuple"),
])
def test_bad_values_name_key_value_and_type(item, expected):
    key, value = item.split("=")
    with pytest.raises(ConfigError) as err:
        resolve_config(Cfg, sets=[item])
    assert f"'{key}'" in str(err.value) and value in str(err.value) and expected in str(err.value)


def test_validation_and_syntax_errors():
    with pytest.raises(ConfigError, match="train.steps must be positive"):
        resolve_config(Cfg, sets=["train.steps=0"])
    with pytest.raises(ConfigError, match="expects key=value"):
        resolve_config(Cfg, sets=["train.steps"])
    with pytest.raises(ConfigError, match="is a group"):
        resolve_config(Cfg, sets=["inner=3"])


@pytest.mark.parametrize("value", ["0", "-5", "nan", "inf"])
def test_dist_timeout_must_be_a_positive_finite_number_of_seconds(value):
    with pytest.raises(ConfigError, match="dist_timeout.*(positive number of seconds|finite number)"):
        resolve_config(Cfg, sets=[f"train.dist_timeout={value}"])
    assert resolve_config(Cfg, sets=["train.dist_timeout=12.5"]).train.dist_timeout == 12.5


def test_round_trip_through_json_values():
    import json

    cfg = resolve_config(Cfg, sets=["shape=7,8", "clip=1.5", "train.grad_clip=2"])
    again = from_dict(Cfg, json.loads(json.dumps(to_dict(cfg))))
    assert again == cfg
    assert "train.lr" in config_keys(Cfg) and "inner.scale" in config_keys(Cfg)


@dataclass
class Bounded:
    train: TrainConfig = field(default_factory=TrainConfig)
    width: Dim = 8
    iters: Optional[Iterations] = None
    items: DatasetSize = 10
    scale: float = 1.0


@pytest.mark.parametrize("item, says", [
    ("width=0", "must be >= 1"), ("iters=1000000000", f"must be in [1, {MAX_ITERATIONS}]"),
    ("items=-1", "must be in [0,"), ("scale=nan", "finite"), ("scale=-inf", "finite"),
    ("train.lr=1e38", "train.lr must be in (0, 1.0]"), ("train.weight_decay=1e400", "finite"),
])
def test_bounds_and_non_finite_values_are_refused(item, says):
    with pytest.raises(ConfigError, match=re.escape(says)):
        resolve_config(Bounded, sets=[item])


@pytest.mark.parametrize("text, says", [
    ('{"scale": NaN}', "finite"), ('{"train": {"lr": Infinity}}', "finite"), ('{"width": -4}', "must be >= 1"),
    ('{"items": 10000000000}', "must be in [0,"),
])
def test_a_stored_config_is_held_to_the_same_bounds(text, says):
    with pytest.raises(ConfigError, match=re.escape(says)):  # json.loads reads NaN/Infinity, as in checkpoints
        from_dict(Bounded, json.loads(text))
    assert resolve_config(Bounded, sets=["iters=none", "width=3"]).iters is None


def test_docs_hold_the_generated_train_options_table_verbatim():
    """docs/cli.md's table of the train.* options is `python -m deqkit.train.config_doc` output, so a new
    field, default or help text that is not in the docs fails here (regenerate with that command)."""
    import dataclasses
    from pathlib import Path

    from deqkit.train.config import TrainConfig
    from deqkit.train.config_doc import options_markdown

    table = options_markdown()
    docs = (Path(__file__).resolve().parents[1] / "docs" / "cli.md").read_text()
    assert table in docs
    for f in dataclasses.fields(TrainConfig):
        assert f.metadata.get("help"), f"TrainConfig.{f.name} has no metadata help"
        assert f"| `train.{f.name}` |" in table
    assert "| `train.lr` | float | `0.001` | peak learning rate of AdamW |" in table
