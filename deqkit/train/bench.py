"""Throughput of a training setup: steps/s of the data pipeline alone and of full training steps.

If the data-only rate is not far above the training rate, loading is the bottleneck. Used by
``deqkit bench`` and to choose the default thread count (docs/cli.md records the numbers).
"""

from __future__ import annotations

import dataclasses
import time
from typing import Any

import torch

from deqkit.train.application import Application
from deqkit.train.data import to_device
from deqkit.train.trainer import Trainer


def measure(app: Application, config: Any, *, steps: int = 50, threads: int | None = None,
            warmup: int = 5) -> dict[str, float]:
    """``{'threads', 'data_steps_per_s', 'train_steps_per_s'}`` for ``steps`` timed steps each."""
    previous = torch.get_num_threads()
    train_cfg = dataclasses.replace(config.train, num_threads=threads, steps=warmup + steps + 1,
                                    spectral_iters=0)
    config = dataclasses.replace(config, train=train_cfg)
    try:
        if threads:
            torch.set_num_threads(threads)
        trainer = Trainer(app, config, None)
        for _ in range(warmup):
            to_device(next(trainer.stream), trainer.device)
        start = time.perf_counter()
        for _ in range(steps):
            to_device(next(trainer.stream), trainer.device)
        data_rate = steps / (time.perf_counter() - start)
        for _ in range(warmup):
            trainer._step(False)
        start = time.perf_counter()
        for _ in range(steps):
            trainer._step(False)
        train_rate = steps / (time.perf_counter() - start)
    finally:
        torch.set_num_threads(previous)
    return {"threads": threads or previous, "data_steps_per_s": data_rate, "train_steps_per_s": train_rate}
