"""Training machinery shared by every application: the application protocol, configs, the trainer,
checkpoints and evaluation. ``deqkit train`` (see :mod:`deqkit.cli`) is a thin layer over this package."""

from deqkit.train.application import Application, discover, load_application
from deqkit.train.checkpoint import Checkpoint, load_checkpoint, read_metadata, save_checkpoint
from deqkit.train.config import TrainConfig, config_keys, from_dict, resolve_config, to_dict
from deqkit.train.errors import (ApplicationError, CheckpointError, ConfigError, DeqkitError, TrainingError,
                                 UsageError)
from deqkit.train.evaluate import evaluate
from deqkit.train.trainer import Interrupted, Reporter, RunResult, Trainer, train

__all__ = [
    "Application", "discover", "load_application", "Checkpoint", "load_checkpoint", "read_metadata",
    "save_checkpoint", "TrainConfig", "config_keys", "from_dict", "resolve_config", "to_dict",
    "ApplicationError", "CheckpointError", "ConfigError", "DeqkitError", "TrainingError", "UsageError",
    "evaluate", "Interrupted", "Reporter", "RunResult", "Trainer", "train",
]
