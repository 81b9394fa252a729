"""Score a model on a split: the application's per-sample metrics averaged over every sample, plus the
dataset-level metrics of its optional ``summarize`` hook."""

from __future__ import annotations

import contextlib
import math
from typing import Any, Mapping

import torch
from torch import nn

from deqkit.train.application import Application
from deqkit.train.data import eval_batches, to_device
from deqkit.train.errors import ApplicationError


def autocast(device: torch.device, amp: str) -> contextlib.AbstractContextManager:
    """bf16 autocast when ``amp == 'bf16'`` (CPU or CUDA), otherwise nothing."""
    if amp == "bf16":
        return torch.autocast(device_type=device.type, dtype=torch.bfloat16)
    return contextlib.nullcontext()


def batch_size_of(batch: Any) -> int | None:
    """The number of samples in a batch: the leading size of its first tensor with one (None if it has none)."""
    for leaf in torch.utils._pytree.tree_leaves(batch):
        if isinstance(leaf, torch.Tensor) and leaf.ndim >= 1:
            return int(leaf.shape[0])
    return None


def check_per_sample(name: str, values: Mapping[str, Any], batch: Any) -> None:
    """Every averaged metric must hold one value per sample of ``batch`` (``[B]``, or ``[n]`` with n < B for
    a metric measured on the first n samples only): a batch mean (a scalar) would be averaged as if it were
    one sample, and more values than samples (per pixel, per slot) would outweigh the other metrics."""
    samples = batch_size_of(batch)
    if samples is None:
        return
    for key, value in values.items():
        if key.startswith("_"):
            continue
        shape = tuple(torch.as_tensor(value).shape)
        if (not shape and samples > 1) or math.prod(shape) > samples:
            raise ApplicationError(
                f"application '{name}': metrics()['{key}'] has shape {list(shape)} for a batch of {samples} "
                f"samples; metrics must return one value per sample (Tensor[{samples}], or Tensor[n] for the "
                f"first n samples), e.g. (pred == y).float() rather than its mean")


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
            for index, batch in enumerate(loader):
                with autocast(device, config.train.amp):
                    values = app.metrics(model, to_device(batch, device), config)
                if index == 0:
                    check_per_sample(app.name, values, batch)
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
