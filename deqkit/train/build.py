"""Build an application's model safely: first on the meta device (no memory, no initialisation), to check
that it fits a checkpoint's tensors and this machine's memory; only then for real.

A config from a checkpoint or ``--set`` may name sizes far from what its tensors hold (``hidden=10**9``),
so the comparison must come before any real allocation or initialisation (an orthogonal init of a
20000x20000 matrix alone takes minutes).
"""

from __future__ import annotations

import os
from typing import Any, Mapping

import torch
from deqkit.train.application import Application
from deqkit.train.errors import UsageError


def meta_state(app: Application, config: Any) -> dict[str, torch.Tensor]:
    """The model's state dict built on the meta device (shapes and dtypes only; the global RNG is untouched)."""
    with torch.random.fork_rng(devices=[]), torch.device("meta"):
        try:
            model = app.build_model(config)
        except Exception as err:  # e.g. a size the config allows but the model cannot use
            raise UsageError(f"application '{app.name}' cannot build its model from this config: "
                             f"{type(err).__name__}: {' '.join(str(err).split())[:300]}") from None
    return model.state_dict()


def mismatch(expected: Mapping[str, torch.Tensor], stored: Mapping[str, torch.Tensor]) -> str | None:
    """The first difference between a model's state dict and stored tensors (names, shapes, dtypes), or None."""
    missing = sorted(set(expected) - set(stored))
    if missing:
        return f"tensor '{missing[0]}' is missing ({len(missing)} missing)"
    unexpected = sorted(set(stored) - set(expected))
    if unexpected:
        return f"tensor '{unexpected[0]}' is not part of the model ({len(unexpected)} such)"
    for name, want in expected.items():
        got = stored[name]
        if tuple(got.shape) != tuple(want.shape):
            return f"tensor '{name}' has shape {tuple(got.shape)}, the model needs {tuple(want.shape)}"
        if got.dtype != want.dtype:
            return f"tensor '{name}' has dtype {got.dtype}, the model needs {want.dtype}"
    return None


def memory_bytes(device: torch.device) -> int | None:
    """Total memory of ``device`` (physical RAM for the CPU), or None when unknown."""
    if device.type == "cuda":
        return torch.cuda.get_device_properties(device).total_memory
    try:
        return os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def check_memory(app: Application, state: Mapping[str, torch.Tensor], device: torch.device, copies: int) -> None:
    """Refuse a model whose ``copies`` of its state (e.g. 4 in training: weights, gradients, two AdamW
    moments) exceed the device's memory, in one line instead of an out-of-memory kill."""
    need = copies * sum(t.numel() * t.element_size() for t in state.values())
    have = memory_bytes(device)
    if have is not None and need > have:
        raise UsageError(f"the model of '{app.name}' needs {need / 2**30:.1f} GiB ({copies} copies of "
                         f"{need // copies / 2**30:.1f} GiB of weights), more than the {have / 2**30:.1f} GiB "
                         f"of {device.type} memory; check the config's model sizes")
