"""A model deqkit did not train, named on the command line: ``--model pkg.module:build`` (or
``path/to/file.py:build``), ``--weights w.safetensors`` and ``--batch data.safetensors``.

The user names the code to import, as with ``python -m``; files are read with safetensors only (never
pickle), so a weights or batch file can hold tensors and nothing that runs.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqkit.train.errors import CheckpointError, UsageError


def import_object(spec: str, option: str) -> Any:
    """The object ``spec`` names: ``package.module:name`` (imported with the current directory on the path,
    like ``python -m``) or ``file.py:name``."""
    module_name, sep, attr = spec.rpartition(":")
    if not sep or not module_name or not attr:
        raise UsageError(f"{option} expects MODULE:NAME (e.g. mypkg.models:build or model.py:build), got {spec!r}")
    if module_name.endswith(".py"):
        path = Path(module_name)
        if not path.is_file():
            raise UsageError(f"{option} {spec}: {path} is not a file")
        loaded = importlib.util.spec_from_file_location(f"_deqkit_user_{path.stem}", path)
        module = importlib.util.module_from_spec(loaded)
        sys.modules[loaded.name] = module
        loaded.loader.exec_module(module)
    else:
        if os.getcwd() not in sys.path and "" not in sys.path:
            sys.path.insert(0, os.getcwd())
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as err:
            if err.name is None or not module_name.startswith(err.name):
                raise
            raise UsageError(f"{option} {spec}: no module named {err.name!r} (run from the folder that holds it "
                             f"or add that folder to PYTHONPATH)") from None
    try:
        return getattr(module, attr)
    except AttributeError:
        raise UsageError(f"{option} {spec}: module {module_name!r} has no attribute {attr!r}") from None


def build_model(spec: str) -> nn.Module:
    """The ``nn.Module`` that ``--model`` names: a module object, or a callable taking no arguments that
    returns one."""
    obj = import_object(spec, "--model")
    model = obj if isinstance(obj, nn.Module) else obj() if callable(obj) else obj
    if not isinstance(model, nn.Module):
        raise UsageError(f"--model {spec} must name a torch.nn.Module or a function returning one, "
                         f"got {type(model).__name__}")
    return model


def _read(path: Path, what: str) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found")
    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read {what} {path}: not a safetensors file ({' '.join(str(err).split())})") \
            from None


def load_weights(model: nn.Module, path: Path) -> list[str]:
    """Load a safetensors state dict into ``model`` (every key must match); returns the names of tensors
    holding NaN or Inf."""
    state = _read(path, "weights file")
    try:
        result = model.load_state_dict(state, strict=False)
    except RuntimeError as err:  # shapes that do not match
        raise CheckpointError(f"{path} does not fit the model: {' '.join(str(err).split())[:300]}") from None
    if result.missing_keys or result.unexpected_keys:
        parts = []
        if result.missing_keys:
            parts.append(f"missing {', '.join(result.missing_keys[:5])}")
        if result.unexpected_keys:
            parts.append(f"unexpected {', '.join(result.unexpected_keys[:5])}")
        raise CheckpointError(f"{path} does not fit the model: {'; '.join(parts)}")
    return [k for k, v in state.items() if v.is_floating_point() and not bool(torch.isfinite(v).all())]


def load_batch(path: Path) -> Any:
    """A batch from a safetensors file: one tensor is the batch itself; tensors named ``0``, ``1``, ... are a
    tuple in that order (the model is called as ``model(*batch)``); other names are a dict (``model(**batch)``)."""
    tensors = _read(path, "batch file")
    if not tensors:
        raise CheckpointError(f"batch file {path} holds no tensor")
    if len(tensors) == 1:
        return next(iter(tensors.values()))
    if set(tensors) == {str(i) for i in range(len(tensors))}:
        return tuple(tensors[str(i)] for i in range(len(tensors)))
    return dict(tensors)
