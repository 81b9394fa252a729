"""Errors of the trainer and the CLI. All derive from :class:`deqkit.errors.DeqkitError`, which the CLI
prints as one line (``error: ...``) and turns into the process exit status ``exit_code`` (default 1)."""

from __future__ import annotations

from deqkit.errors import ConfigError as _CoreConfigError
from deqkit.errors import DeqkitError

__all__ = ["DeqkitError", "UsageError", "ConfigError", "ApplicationError", "CheckpointError",
           "TrainingError", "exit_code"]


class UsageError(DeqkitError, ValueError):
    """The command line asked for something invalid (a bad option value, a clashing output folder)."""

    exit_code = 2


class ConfigError(UsageError, _CoreConfigError):
    """A config key is unknown or a value does not fit the field's type."""


class ApplicationError(DeqkitError):
    """An application could not be found or does not follow the protocol."""

    exit_code = 2


class CheckpointError(DeqkitError):
    """A checkpoint is missing, truncated, corrupt, foreign, or from another application."""

    exit_code = 1


class TrainingError(DeqkitError):
    """Training cannot continue (e.g. too many non-finite steps in a row)."""

    exit_code = 1


def exit_code(err: BaseException) -> int:
    """The exit status for an error: its ``exit_code`` (usage errors 2), otherwise 1."""
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code
    return 2 if isinstance(err, _CoreConfigError) else 1
