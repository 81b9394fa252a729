"""Score a model on a split: the application's per-sample metrics averaged over every sample, plus the
dataset-level metrics of its optional ``summarize`` hook."""

from __future__ import annotations

import contextlib
from typing import Any

import torch
from torch import nn

from deqkit.train.application import Application
from deqkit.train.data import eval_batches, to_device


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``amp == 'bf16'`` (CPU or CUDA), otherwise nothing."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def evaluate(app: Application, model: nn.Module, config: Any, split: str, device: torch.device,
             *, limit: int | None = None, dataset: Any = None) -> dict[str, float]:
    """Mean of each metric over the split (at most ``limit`` batches); adds ``'samples'``.

    With ``app.summarize`` set, every batch's metrics are kept (on the CPU) and its dataset-level values
    are added; keys starting with ``_`` go to ``summarize`` only.

    Runs in eval mode without gradients and in a forked RNG, so evaluating never changes training.
    """
    if split not in app.splits:
        from deqkit.train.errors import UsageError

        raise UsageError(f"application '{app.name}' has no split '{split}'; splits: {', '.join(app.splits)}")
    dataset = dataset if dataset is not None else app.build_dataset(config, split)
    loader = eval_batches(dataset, config.train.batch_size, limit, app.collate)
    sums: dict[str, float] = {}
    counts: dict[str, int] = {}
    outputs: list[dict[str, torch.Tensor]] = []
    was_training = model.training
    model.eval()
    try:
        with torch.random.fork_rng(devices=[]), torch.no_grad():
            for batch in loader:
                with autocast(device, config.train.amp):
                    values = app.metrics(model, to_device(batch, device), config)
                if app.summarize is not None:
                    outputs.append({k: torch.as_tensor(v).detach().cpu() for k, v in values.items()})
                for key, value in values.items():
                    if key.startswith("_"):
                        continue
                    value = torch.as_tensor(value).detach().double().reshape(-1)
                    sums[key] = sums.get(key, 0.0) + value.sum().item()
                    counts[key] = counts.get(key, 0) + value.numel()
    finally:
        model.train(was_training)
    result = {key: sums[key] / counts[key] for key in sums}
    result["samples"] = float(max(counts.values(), default=0))
    if app.summarize is not None and outputs:
        result.update({key: float(value) for key, value in app.summarize(outputs, config).items()})
    return result
