"""Rebuild a trained model from a checkpoint alone: find its application, config and weights."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from deqkit.train.application import Application, load_application, load_registered
from deqkit.train.build import check_memory, meta_state, mismatch
from deqkit.train.checkpoint import Checkpoint, load_checkpoint, read_metadata
from deqkit.train.config import from_dict, resolve_config
from deqkit.train.errors import CheckpointError, ConfigError, UsageError


@dataclass
class Restored:
    """A checkpoint's application, config and model (in eval mode, on ``device``)."""

    app: Application
    config: Any
    model: nn.Module
    checkpoint: Checkpoint
    path: Path
    nonfinite: list[str] = field(default_factory=list)  # weights holding NaN or Inf (the CLI warns)


def find_checkpoint_app(path: str | Path, app: str | Path | None = None) -> Application:
    """The application of a checkpoint: the one the user names (``app``: a folder or a name), else the
    installed or ``$DEQKIT_APPS`` application with the name stored in the file. The file's metadata never
    makes deqkit import anything by itself: its ``app_path`` is shown in messages only."""
    meta = read_metadata(path)
    name = meta.get("app", "")
    if app is not None:
        found = load_application(app)
    else:
        if not name:
            raise CheckpointError(f"{path} names no application; pass --app FOLDER|NAME")
        trained_from = " ".join(str(meta.get("app_path") or "").split())[:200]  # shown, never imported
        hint = f" (the checkpoint was trained from {trained_from})" if trained_from else ""
        found = load_registered(name, hint=hint)
    if found.name != name:
        raise CheckpointError(f"{path} is a checkpoint of application '{name}', but "
                              f"{found.path or 'the application named'} defines '{found.name}'")
    return found


def stored_config(app: Application, ckpt: Checkpoint, path: str | Path) -> Any:
    """The checkpoint's config as ``app``'s dataclass; an invalid one is a :class:`CheckpointError` (exit 1):
    the file is wrong, not the command line."""
    try:
        return from_dict(app.config_type, ckpt.config)
    except ConfigError as err:
        raise CheckpointError(f"{path} holds an invalid config: {err}") from None


def restore(path: str | Path, device: torch.device | str = "cpu", sets: list[str] | tuple[str, ...] = (),
            app: str | Path | None = None) -> Restored:
    """Load ``path`` (one-line :class:`CheckpointError` if it is missing, corrupt or foreign) with the
    application ``app`` names, or the installed one the checkpoint names (see :func:`find_checkpoint_app`).

    ``sets`` (``key=value``) change the stored config before the model is built, e.g. ``iters=12`` to run a
    fixed point longer at test time; a change that alters the weights' shapes is a one-line error.
    """
    app = find_checkpoint_app(path, app)
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
