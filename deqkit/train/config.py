"""Typed run configuration: the shared :class:`TrainConfig`, presets and ``--set key=value`` overrides.

An application's config is a dataclass with a ``train: TrainConfig`` field plus its own fields (which may
be nested dataclasses). Every value is checked against its field's type; unknown keys are errors that
list the valid ones, so a typo never silently trains the wrong model. Floats must be finite, and a field
annotated with a :class:`Range` (e.g. ``hidden: Dim``, ``max_iter: Iterations``) must lie in it: a config
from a checkpoint or ``--set`` can never ask for a negative width, an endless solve or a huge dataset.
"""

from __future__ import annotations

import dataclasses
import math
import types
import typing
from dataclasses import dataclass, fields, is_dataclass
from typing import Annotated, Any, Literal, Mapping

from deqkit.data.config import MAX_DATASET_SIZE
from deqkit.errors import ConfigError as _CoreConfigError
from deqkit.train.errors import ConfigError

MAX_ITERATIONS = 1_000  # cap of iteration counts in configs (max_iter, iters): every solve ends (presets use <= 30)
MAX_LR = 1.0  # AdamW moves each weight by about lr per step: above 1 nothing trains, and 1e38 overflows
MAX_BATCH_SIZE = 65_536  # per process; a checkpoint cannot ask evaluation for a batch of 10^9


@dataclass(frozen=True)
class Range:
    """Bounds of a numeric config field, attached with ``typing.Annotated`` (e.g. ``Annotated[int, Range(1)]``).

    ``from_dict``/``resolve_config`` reject a value outside ``[low, high]`` with a one-line error giving ``why``.
    """

    low: float | None = None
    high: float | None = None
    why: str = ""

    def holds(self, value: Any) -> bool:
        return (self.low is None or value >= self.low) and (self.high is None or value <= self.high)

    def describe(self) -> str:
        if self.high is None:
            return f">= {self.low}"
        if self.low is None:
            return f"<= {self.high}"
        return f"in [{self.low}, {self.high}]"


Dim = Annotated[int, Range(1, why="a model size (width, channels, slots) must be positive")]
Iterations = Annotated[int, Range(1, MAX_ITERATIONS, why=f"iteration counts are capped at {MAX_ITERATIONS} so "
                                  "that no config (a checkpoint's or --set) asks for an endless solve")]
DatasetSize = Annotated[int, Range(0, MAX_DATASET_SIZE, why=f"dataset sizes are capped at {MAX_DATASET_SIZE}")]


def _option(default: Any, help: str) -> Any:
    """A config field with its one-line meaning in ``metadata["help"]`` (docs/cli.md's table is made from it)."""
    return dataclasses.field(default=default, metadata={"help": help})


@dataclass
class TrainConfig:
    """Options every application shares: optimisation, schedule, logging and the runtime (the table of
    docs/cli.md is generated from these fields: ``python -m deqkit.train.config_doc``)."""

    steps: int = _option(1000, "optimiser steps in the whole run")
    batch_size: int = _option(64, "per process (a DDP run with N processes sees N * batch_size per step)")
    lr: float = _option(1e-3, "peak learning rate of AdamW")
    weight_decay: float = _option(0.0, "AdamW weight decay (decoupled from the gradient)")
    warmup: int = _option(0, "linear warm-up steps from 0 to lr")
    decay: Literal["none", "cosine", "linear"] = _option("cosine", "lr after warm-up, down to 0 at train.steps")
    grad_clip: float | None = _option(None, "clip the global gradient norm to this value")
    seed: int = _option(0, "seed of the model initialisation and the data order")
    log_every: int = _option(10, "a metrics.jsonl line every this many steps")
    eval_every: int = _option(200, "evaluate every this many steps; 0: only at the end")
    eval_split: str = _option("val", "split scored during training and at the end")
    eval_batches: int | None = _option(None, "batches per evaluation; none: the whole split")
    ckpt_every: int = _option(200, "a periodic checkpoint every this many steps (last.safetensors is refreshed "
                                   "at each one)")
    keep_checkpoints: int = _option(3, "periodic checkpoints kept besides last.safetensors")
    image_every: int = _option(200, "pictures every this many steps; 0: only at the end")
    max_bad_steps: int = _option(10, "stop after this many non-finite steps in a row")
    spectral_iters: int = _option(10, "power iterations for the logged spectral norm; 0 disables it")
    amp: Literal["off", "bf16"] = _option("off", "bf16 autocast for the forward pass")
    device: Literal["auto", "cpu", "cuda"] = _option("auto", "auto: CUDA if available, else the CPU")
    num_threads: int | None = _option(1, "torch intra-op threads (1 measured fastest on 2 cores, see "
                                         "`deqkit bench`); none: torch's default")
    num_workers: int = _option(0, "DataLoader worker processes")
    dist_timeout: float = _option(300.0, "seconds a torchrun rank waits for the others in a collective before "
                                         "failing with one line (docs/cli.md)")

    def __post_init__(self) -> None:
        positive = ("steps", "batch_size", "log_every", "max_bad_steps")
        for name in positive:
            if getattr(self, name) <= 0:
                raise ConfigError(f"train.{name} must be positive, got {getattr(self, name)}")
        for name in ("warmup", "eval_every", "ckpt_every", "image_every", "spectral_iters", "num_workers",
                     "keep_checkpoints"):
            if getattr(self, name) < 0:
                raise ConfigError(f"train.{name} must be >= 0, got {getattr(self, name)}")
        if self.batch_size > MAX_BATCH_SIZE:
            raise ConfigError(f"train.batch_size must be <= {MAX_BATCH_SIZE}, got {self.batch_size}")
        if self.spectral_iters > MAX_ITERATIONS:
            raise ConfigError(f"train.spectral_iters must be <= {MAX_ITERATIONS}, got {self.spectral_iters}")
        # written as `not (low < x <= high)` so that NaN fails too
        if not 0 < self.lr <= MAX_LR:
            raise ConfigError(f"train.lr must be in (0, {MAX_LR}], got {self.lr}")
        if not 0 <= self.weight_decay < math.inf:
            raise ConfigError(f"train.weight_decay must be a finite number >= 0, got {self.weight_decay}")
        if self.grad_clip is not None and not 0 < self.grad_clip < math.inf:
            raise ConfigError(f"train.grad_clip must be a finite positive number or none, got {self.grad_clip}")
        if not 0 < self.dist_timeout < math.inf:
            raise ConfigError(f"train.dist_timeout must be a positive number of seconds, got {self.dist_timeout}")
        if self.num_threads is not None and self.num_threads <= 0:
            raise ConfigError(f"train.num_threads must be positive or none, got {self.num_threads}")


# --------------------------------------------------------------------------------------------- types


def _hints(cls: type) -> dict[str, Any]:
    """Field types of a config dataclass, with their ``Annotated`` bounds kept."""
    return typing.get_type_hints(cls, include_extras=True)


def _type_name(tp: Any) -> str:
    origin = typing.get_origin(tp)
    if origin is Annotated:
        return _type_name(typing.get_args(tp)[0])
    if origin is Literal:
        return "one of " + "|".join(str(a) for a in typing.get_args(tp))
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_type_name(a) for a in typing.get_args(tp))
    if origin is tuple:
        args = typing.get_args(tp)
        if len(args) == 2 and args[1] is Ellipsis:
            return f"comma-separated {_type_name(args[0])}s"
        return "tuple (" + ",".join(_type_name(a) for a in args) + ")"
    if tp is type(None):
        return "none"
    return getattr(tp, "__name__", str(tp))


class _Mismatch(Exception):
    pass


class _OutOfRange(Exception):
    """The value has the field's type but not an allowed value (its message says which are allowed)."""


_TRUE = {"true", "yes", "on", "1"}
_FALSE = {"false", "no", "off", "0"}


def _coerce(value: Any, tp: Any, from_text: bool) -> Any:
    """Convert ``value`` (a Python/JSON value, or a string from the command line) to type ``tp``."""
    origin = typing.get_origin(tp)
    if tp is Any:
        return value
    if origin is Annotated:
        base, *extras = typing.get_args(tp)
        value = _coerce(value, base, from_text)
        for bound in extras:
            if isinstance(bound, Range) and not bound.holds(value):
                raise _OutOfRange(f"must be {bound.describe()}" + (f" ({bound.why})" if bound.why else ""))
        return value
    if tp is type(None):
        if value is None or (from_text and str(value).lower() in ("none", "null")):
            return None
        raise _Mismatch
    if origin in (typing.Union, types.UnionType):
        args = typing.get_args(tp)
        # try None first so "none" is not read as the string "none"
        for arg in sorted(args, key=lambda a: a is not type(None)):
            try:
                return _coerce(value, arg, from_text)
            except _Mismatch:
                continue
        raise _Mismatch
    if origin is Literal:
        for choice in typing.get_args(tp):
            if value == choice or (from_text and str(value) == str(choice)):
                return choice
        raise _Mismatch
    if origin is tuple:
        args = typing.get_args(tp)
        if from_text and isinstance(value, str):
            text = value.strip().strip("()[]")
            value = [] if not text else [part.strip() for part in text.split(",")]
        if not isinstance(value, (list, tuple)):
            raise _Mismatch
        if len(args) == 2 and args[1] is Ellipsis:
            return tuple(_coerce(v, args[0], from_text) for v in value)
        if args and len(args) != len(value):
            raise _Mismatch
        return tuple(_coerce(v, a, from_text) for v, a in zip(value, args or (Any,) * len(value)))
    if tp is bool:
        if isinstance(value, bool):
            return value
        if from_text and isinstance(value, str) and value.lower() in _TRUE | _FALSE:
            return value.lower() in _TRUE
        raise _Mismatch
    if tp is int:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, int):
            return value
        if from_text and isinstance(value, str):
            try:
                return int(value.replace("_", ""))
            except ValueError:
                try:  # allow 1e3 for integers when it is exact
                    as_float = float(value)
                except ValueError:
                    raise _Mismatch from None
                if as_float.is_integer():
                    return int(as_float)
        raise _Mismatch
    if tp is float:
        if isinstance(value, bool):
            raise _Mismatch
        if isinstance(value, (int, float)):
            number = float(value)
        elif from_text and isinstance(value, str):
            try:
                number = float(value)
            except ValueError:
                raise _Mismatch from None
        else:
            raise _Mismatch
        if not math.isfinite(number):  # NaN and inf are never a setting, only a typo or a poisoned file
            raise _OutOfRange("must be a finite number")
        return number
    if tp is str:
        if isinstance(value, str):
            return value
        raise _Mismatch
    raise ConfigError(f"config fields of type {_type_name(tp)} are not supported")


# -------------------------------------------------------------------------------------------- config


def config_keys(cls: type, prefix: str = "") -> list[str]:
    """All settable dotted keys of a config dataclass, e.g. ``['hidden', 'train.lr', ...]``."""
    keys = []
    hints = _hints(cls)
    for f in fields(cls):
        tp = hints[f.name]
        if is_dataclass(tp):
            keys += config_keys(tp, prefix + f.name + ".")
        else:
            keys.append(prefix + f.name)
    return keys


def to_dict(config: Any) -> dict[str, Any]:
    """The config as nested plain dicts (JSON-ready except tuples, which JSON writes as lists)."""
    return dataclasses.asdict(config)


def from_dict(cls: type, data: Mapping[str, Any], *, _prefix: str = "", _root: type | None = None) -> Any:
    """Build ``cls`` from nested dicts (e.g. a loaded config.json); missing keys keep their defaults."""
    root = _root or cls
    if not isinstance(data, Mapping):
        raise ConfigError(f"config section '{_prefix.rstrip('.') or '<root>'}' must be a mapping")
    hints = _hints(cls)
    names = {f.name for f in fields(cls)}
    kwargs = {}
    for key, value in data.items():
        if key not in names:
            _unknown(_prefix + key, root)
        tp = hints[key]
        if is_dataclass(tp):
            kwargs[key] = from_dict(tp, value, _prefix=_prefix + key + ".", _root=root)
        else:
            kwargs[key] = _convert(_prefix + key, value, tp, from_text=False)
    try:
        return cls(**kwargs)
    except TypeError as err:  # e.g. a required field without a default
        raise ConfigError(f"cannot build {cls.__name__}: {err}") from None
    except _CoreConfigError as err:  # a __post_init__ check of the core (e.g. deqkit.nn): a usage error here
        if isinstance(err, ConfigError):
            raise
        raise ConfigError(str(err)) from None


def _convert(key: str, value: Any, tp: Any, from_text: bool) -> Any:
    try:
        return _coerce(value, tp, from_text)
    except _Mismatch:
        raise ConfigError(f"bad value {value!r} for config key '{key}': expected {_type_name(tp)}") from None
    except _OutOfRange as err:
        raise ConfigError(f"bad value {value!r} for config key '{key}': {err}") from None


def _unknown(key: str, root: type) -> None:
    raise ConfigError(f"unknown config key '{key}'; valid keys: {', '.join(config_keys(root))}")


def flatten_overrides(overrides: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{'train': {'lr': 1}, 'a.b': 2}`` -> ``{'train.lr': 1, 'a.b': 2}`` (presets may use either form)."""
    flat = {}
    for key, value in overrides.items():
        if isinstance(value, Mapping):
            flat.update(flatten_overrides(value, prefix + key + "."))
        else:
            flat[prefix + key] = value
    return flat


def _set_path(data: dict[str, Any], cls: type, key: str, value: Any, from_text: bool, root: type) -> None:
    parts = key.split(".")
    node, node_cls = data, cls
    for i, part in enumerate(parts):
        hints = _hints(node_cls)
        if part not in {f.name for f in fields(node_cls)}:
            _unknown(key, root)
        tp = hints[part]
        last = i == len(parts) - 1
        if is_dataclass(tp):
            if last:
                raise ConfigError(f"config key '{key}' is a group; set one of its keys, e.g. "
                                  f"'{config_keys(tp, key + '.')[0]}'")
            node, node_cls = node[part], tp
        elif not last:
            _unknown(key, root)
        else:
            node[part] = _convert(key, value, tp, from_text)


def parse_set(item: str) -> tuple[str, str]:
    """``'train.lr=3e-4'`` -> ``('train.lr', '3e-4')``."""
    key, sep, value = item.partition("=")
    if not sep or not key.strip():
        raise ConfigError(f"--set expects key=value, got {item!r}")
    return key.strip(), value.strip()


def resolve_config(cls: type, *, base: Any = None, overrides: Mapping[str, Any] | None = None,
                   sets: list[str] | tuple[str, ...] = ()) -> Any:
    """Defaults (or ``base``) <- ``overrides`` (a preset, Python values) <- ``sets`` (``key=value`` strings)."""
    data = to_dict(base if base is not None else _default(cls))
    for key, value in flatten_overrides(overrides or {}).items():
        _set_path(data, cls, key, value, from_text=False, root=cls)
    for item in sets:
        key, text = parse_set(item)
        _set_path(data, cls, key, text, from_text=True, root=cls)
    return from_dict(cls, data)


def _default(cls: type) -> Any:
    try:
        return cls()
    except TypeError as err:
        raise ConfigError(f"config {cls.__name__} needs a default for every field: {err}") from None


__all__ = ["TrainConfig", "Range", "Dim", "Iterations", "DatasetSize", "MAX_ITERATIONS", "MAX_LR",
           "MAX_BATCH_SIZE", "config_keys", "to_dict", "from_dict", "resolve_config", "parse_set",
           "flatten_overrides"]
