"""Rebuild a trained model from a checkpoint alone: find its application, config and weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqkit.train.application import Application, load_application
from deqkit.train.build import check_memory, meta_state, mismatch
from deqkit.train.checkpoint import Checkpoint, load_checkpoint, read_metadata
from deqkit.train.config import from_dict, resolve_config
from deqkit.train.errors import ApplicationError, CheckpointError, ConfigError, UsageError


@dataclass
class Restored:
    """A checkpoint's application, config and model (in eval mode, on ``device``)."""

    app: Application
    config: Any
    model: nn.Module
    checkpoint: Checkpoint
    path: Path
    nonfinite: list[str] = field(default_factory=list)  # weights holding NaN or Inf (the CLI warns)


def find_checkpoint_app(path: str | Path) -> Application:
    """The application a checkpoint belongs to: from the folder it was trained from, else by name."""
    meta = read_metadata(path)
    app_path = meta.get("app_path") or ""
    name = meta.get("app", "")
    if app_path and Path(app_path).is_dir():
        app = load_application(app_path)
    else:
        try:
            app = load_application(name)
        except ApplicationError:
            raise ApplicationError(f"cannot find application '{name}' of checkpoint {path} (trained from "
                                   f"{app_path or 'an unknown folder'}); pass its folder in $DEQKIT_APPS") from None
    if app.name != name:
        raise CheckpointError(f"{path} is a checkpoint of application '{name}', but {app.path} defines "
                              f"'{app.name}'")
    return app


def stored_config(app: Application, ckpt: Checkpoint, path: str | Path) -> Any:
    """The checkpoint's config as ``app``'s dataclass; an invalid one is a :class:`CheckpointError` (exit 1):
    the file is wrong, not the command line."""
    try:
        return from_dict(app.config_type, ckpt.config)
    except ConfigError as err:
        raise CheckpointError(f"{path} holds an invalid config: {err}") from None


def restore(path: str | Path, device: torch.device | str = "cpu", sets: list[str] | tuple[str, ...] = ()
            ) -> Restored:
    """Load ``path`` (one-line :class:`CheckpointError` if it is missing, corrupt or foreign).

    ``sets`` (``key=value``) change the stored config before the model is built, e.g. ``iters=12`` to run a
    fixed point longer at test time; a change that alters the weights' shapes is a one-line error.
    """
    app = find_checkpoint_app(path)
    ckpt = load_checkpoint(path, app=app.name)
    config = stored_config(app, ckpt, path)
    if sets:
        config = resolve_config(app.config_type, base=config, sets=sets)
    # compare the stored tensors with the config's model on the meta device before allocating anything
    try:
        expected = meta_state(app, config)
    except UsageError as err:
        if sets:
            raise
        raise CheckpointError(f"{path}: {err}") from None
    problem = mismatch(expected, ckpt.model)
    if problem and sets:  # the user's change broke it: a usage error (exit 2), not a bad checkpoint
        raise UsageError(f"--set {' '.join(sets)} changes the model of '{app.name}' so that {path} no longer "
                         f"fits it; only change what leaves the weights' shapes alone: {problem}")
    if problem:
        raise CheckpointError(f"{path} does not fit the model of '{app.name}' built from its config: {problem}")
    check_memory(app, ckpt.model, torch.device(device), copies=1)
    model = app.build_model(config).to(device)
    try:
        model.load_state_dict({k: v.to(device) for k, v in ckpt.model.items()})
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit the model of '{app.name}': "
                              f"{' '.join(str(err).split())[:300]}") from None
    model.eval()
    nonfinite = [name for name, value in ckpt.model.items()
                 if value.is_floating_point() and not bool(torch.isfinite(value).all())]
    return Restored(app=app, config=config, model=model, checkpoint=ckpt, path=Path(path), nonfinite=nonfinite)
