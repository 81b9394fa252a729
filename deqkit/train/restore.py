"""Rebuild a trained model from a checkpoint alone: find its application, config and weights."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqkit.train.application import Application, load_application
from deqkit.train.checkpoint import Checkpoint, load_checkpoint, read_metadata
from deqkit.train.config import from_dict
from deqkit.train.errors import ApplicationError, CheckpointError


@dataclass
class Restored:
    """A checkpoint's application, config and model (in eval mode, on ``device``)."""

    app: Application
    config: Any
    model: nn.Module
    checkpoint: Checkpoint
    path: Path


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


def restore(path: str | Path, device: torch.device | str = "cpu") -> Restored:
    """Load ``path`` (one-line :class:`CheckpointError` if it is missing, corrupt or foreign)."""
    app = find_checkpoint_app(path)
    ckpt = load_checkpoint(path, app=app.name)
    config = from_dict(app.config_type, ckpt.config)
    model = app.build_model(config).to(device)
    try:
        model.load_state_dict({k: v.to(device) for k, v in ckpt.model.items()})
    except RuntimeError as err:
        raise CheckpointError(f"{path} does not fit the model of '{app.name}': "
                              f"{' '.join(str(err).split())[:300]}") from None
    model.eval()
    return Restored(app=app, config=config, model=model, checkpoint=ckpt, path=Path(path))
