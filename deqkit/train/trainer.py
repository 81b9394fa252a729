"""The training loop every application shares: optimise, log, evaluate, draw, checkpoint, resume.

Reliability is the point: checkpoints are atomic and hold everything needed to continue bit-exactly on
CPU (weights, optimiser, scheduler, RNG states, data position); non-finite steps are skipped and counted;
a step that makes the weights themselves non-finite stops the run, and no checkpoint is ever written
from non-finite weights; SIGINT/SIGTERM save a checkpoint before exiting; under ``torchrun`` DDP averages the
gradients, the ranks agree on every decision through one small all-reduce per step, and only rank 0 writes.
"""

from __future__ import annotations

import dataclasses
import math
import random
import signal
import threading
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from deqkit.fixed_point import record_solves
from deqkit.provenance import provenance
from deqkit.train import monitor
from deqkit.train.application import Application
from deqkit.train.build import check_memory, meta_state, mismatch
from deqkit.train.checkpoint import Checkpoint, capture_rng, deqkit_version, restore_rng, save_checkpoint
from deqkit.train.config import TrainConfig, to_dict
from deqkit.train.data import EpochBatches, TrainStream, to_device
from deqkit.train.distributed import (Dist, agree, collectives, data_parallel, init_distributed, params_in_sync,
                                      shutdown)
from deqkit.train.errors import ApplicationError, CheckpointError, DeqkitError, TrainingError, UsageError
from deqkit.train.evaluate import autocast, evaluate
from deqkit.train.run_dir import RunDir, read_config


class Interrupted(DeqkitError):
    """SIGINT/SIGTERM arrived; a checkpoint was saved (exit status 130, as for Ctrl-C)."""

    exit_code = 130


@dataclass
class RunResult:
    """What a finished run reports: where it stopped, its final metrics and where the outputs are."""

    step: int
    metrics: dict[str, float]
    out: Path | None
    checkpoint: Path | None
    skipped_steps: int
    elapsed: float
    steps_per_s: float
    eval_split: str
    solver: dict[str, dict[str, float]] = field(default_factory=dict)


def pick_device(kind: str, d: Dist) -> torch.device:
    """``auto`` -> CUDA when available, else CPU; ``cuda`` without a GPU is a usage error."""
    if kind not in ("auto", "cpu", "cuda"):
        raise UsageError(f"unknown device {kind!r}; use auto, cpu or cuda")
    if kind == "cuda" or (kind == "auto" and torch.cuda.is_available()):
        if not torch.cuda.is_available():
            raise UsageError("--device cuda was requested but torch.cuda.is_available() is False "
                             "(no GPU or a CPU-only torch build); use --device cpu or auto")
        return torch.device("cuda", d.local_rank)
    return torch.device("cpu")


def lr_factor(step: int, train: TrainConfig) -> float:
    """Multiplier of ``train.lr`` after ``step`` optimiser steps: linear warm-up, then the decay."""
    warm = min(1.0, (step + 1) / train.warmup) if train.warmup else 1.0
    progress = min(1.0, max(0.0, (step - train.warmup) / max(1, train.steps - train.warmup)))
    decay = {"none": 1.0, "linear": 1.0 - progress, "cosine": 0.5 * (1.0 + math.cos(math.pi * progress))}
    return warm * decay[train.decay]


def optimizer_groups(app: Application, model: nn.Module, config: Any, params: list[nn.Parameter]
                     ) -> list[dict[str, Any]]:
    """AdamW parameter groups: the application's ``param_groups`` hook (each group may set ``lr``,
    ``weight_decay`` and ``warmup``), or one group of every trainable parameter. Every group gets an
    explicit ``warmup`` (the scheduler warms each group up on its own)."""
    train_cfg = config.train
    if app.param_groups is None:
        return [{"params": params, "warmup": train_cfg.warmup}]
    groups = [dict(g) for g in app.param_groups(model, config)]
    seen: dict[int, int] = {}
    for i, group in enumerate(groups):
        unknown = set(group) - {"params", "lr", "weight_decay", "warmup"}
        if "params" not in group or unknown:
            raise ApplicationError(f"application '{app.name}': param_groups()[{i}] needs 'params' and may set "
                                   f"lr, weight_decay, warmup; got keys {sorted(group)}")
        group["params"] = [p for p in group["params"] if p.requires_grad]
        group.setdefault("warmup", train_cfg.warmup)
        for p in group["params"]:
            if id(p) in seen:
                raise ApplicationError(f"application '{app.name}': param_groups() puts a parameter in groups "
                                       f"{seen[id(p)]} and {i}")
            seen[id(p)] = i
    missing = [name for name, p in model.named_parameters() if p.requires_grad and id(p) not in seen]
    if missing:
        raise ApplicationError(f"application '{app.name}': param_groups() leaves out trainable parameters "
                               f"{', '.join(missing[:5])}{' ...' if len(missing) > 5 else ''}")
    return [g for g in groups if g["params"]]


def weights_finite(params: list[torch.Tensor]) -> bool:
    """Whether every parameter is finite: one fused max-norm over all of them (NaN and Inf propagate)."""
    return math.isfinite(torch.nn.utils.get_total_norm(params, norm_type=math.inf).item())


def seed_everything(seed: int) -> None:
    torch.manual_seed(seed)
    np.random.seed(seed % 2**32)
    random.seed(seed)


class _StopFlag:
    """Turns the first SIGINT/SIGTERM into a request to stop after the current step; a second one
    falls back to the default handler (immediate interrupt)."""

    def __init__(self) -> None:
        self.requested = False
        self._previous: dict[int, Any] = {}

    def __enter__(self) -> "_StopFlag":
        if threading.current_thread() is threading.main_thread():
            for sig in (signal.SIGINT, signal.SIGTERM):
                self._previous[sig] = signal.signal(sig, self._handle)
        return self

    def _handle(self, signum: int, frame: Any) -> None:
        self.requested = True
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)

    def __exit__(self, *exc: Any) -> None:
        for sig, previous in self._previous.items():
            signal.signal(sig, previous)


class Trainer:
    """Train ``app``'s model with ``config``, writing to ``out`` (None: write nothing, e.g. for benchmarks).

    ``resume`` is a checkpoint loaded from ``out`` whose state is restored before the first step.
    ``reporter`` receives progress/warning calls (see :class:`Reporter`); the CLI passes a rich one.
    """

    def __init__(self, app: Application, config: Any, out: str | Path | None, *,
                 resume: Checkpoint | None = None, reporter: "Reporter | None" = None,
                 preset: str | None = None) -> None:
        self.app, self.config, self.train_cfg, self.preset = app, config, config.train, preset
        self.resume = resume
        self.use_cuda = self.train_cfg.device == "cuda" or (self.train_cfg.device == "auto"
                                                            and torch.cuda.is_available())
        self.dist = init_distributed(self.use_cuda, self.train_cfg.dist_timeout)
        self.device = pick_device(self.train_cfg.device, self.dist)
        self.run = RunDir(out) if (out is not None and self.dist.is_main) else None
        if self.run is not None:
            self.run.create()  # an unusable folder is a one-line error before any model or data is built
        self.reporter = reporter if (reporter is not None and self.dist.is_main) else Reporter()
        if self.train_cfg.num_threads and self.device.type == "cpu":
            torch.set_num_threads(max(1, self.train_cfg.num_threads // self.dist.world))

        seed_everything(self.train_cfg.seed)
        # the config's model on the meta device first: a resumed checkpoint must fit it and the weights,
        # gradients and two AdamW moments must fit in memory, before anything is allocated or initialised
        expected = meta_state(app, config)
        problem = mismatch(expected, resume.model) if resume is not None else None
        if problem:
            raise CheckpointError(f"the checkpoint does not fit the model of '{app.name}' built from its config: "
                                  f"{problem}")
        check_memory(app, expected, self.device, copies=4)
        self.model = app.build_model(config).to(self.device)
        self._loss = data_parallel(app.loss, self.model, config, self.dist)  # self.model stays unwrapped
        self.params = [p for p in self.model.parameters() if p.requires_grad]
        if not self.params:
            raise UsageError(f"application '{app.name}' built a model without trainable parameters")
        groups = optimizer_groups(app, self.model, config, self.params)
        self.optimizer = torch.optim.AdamW(groups, lr=self.train_cfg.lr,
                                           weight_decay=self.train_cfg.weight_decay)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, [
            (lambda s, c=dataclasses.replace(self.train_cfg, warmup=g["warmup"]): lr_factor(s, c)) for g in groups])
        train_set = app.build_dataset(config, "train")
        self.stream = TrainStream(
            train_set,
            EpochBatches(len(train_set), self.train_cfg.batch_size, self.train_cfg.seed,
                         self.dist.rank, self.dist.world),
            collate=app.collate, num_workers=self.train_cfg.num_workers)
        self.step, self.skipped, self.elapsed_before = 0, 0, 0.0
        self.last_metrics: dict[str, float] = {}
        self._eval_set: Any = None
        self._grad_norm, self._spectral_ok = math.nan, True
        self._direct_solves: list[Any] = []
        self._window = _Window()
        if resume is not None:
            self._restore(resume)
        if self.step > self.train_cfg.steps:
            raise UsageError(f"train.steps={self.train_cfg.steps} is below the step {self.step} the run has "
                             f"reached; a resumed run can only go on (set train.steps >= {self.step})")

    # ------------------------------------------------------------------------------------ state

    def _restore(self, ckpt: Checkpoint) -> None:
        bad = [name for name, value in ckpt.model.items()
               if value.is_floating_point() and not bool(torch.isfinite(value).all())]
        if bad:
            raise CheckpointError(f"the checkpoint at step {ckpt.step} holds non-finite weights ({bad[0]}"
                                  f"{' ...' if len(bad) > 1 else ''}); resume from an earlier step_*.safetensors")
        try:
            self.model.load_state_dict({k: v.to(self.device) for k, v in ckpt.model.items()})
            if ckpt.optimizer is not None:
                self.optimizer.load_state_dict(ckpt.optimizer)
            if ckpt.scheduler is not None:
                self.scheduler.load_state_dict(ckpt.scheduler)
            self.step = ckpt.step
            self.skipped = int(ckpt.state.get("skipped_steps", 0))
            self.elapsed_before = float(ckpt.state.get("elapsed", 0.0))
            self.last_metrics = {str(k): float(v) for k, v in dict(ckpt.state.get("last_metrics", {})).items()}
            self._window.load_state(dict(ckpt.state.get("window", {})))
            if "data" in ckpt.state:
                # each rank's position is the same (epoch, index) since all ranks step together
                self.stream.load_state(ckpt.state["data"])
            if ckpt.rng is not None:
                restore_rng(ckpt.rng["tensors"], ckpt.rng["meta"])
        except (RuntimeError, KeyError, ValueError, TypeError, AttributeError, IndexError) as err:
            raise CheckpointError(f"checkpoint state does not fit this run ({type(err).__name__}): "
                                  f"{' '.join(str(err).split())[:300]}") from None

    def checkpoint(self, elapsed: float) -> Checkpoint:
        """The full state of the run after ``self.step`` steps."""
        rng_tensors, rng_meta = capture_rng()
        return Checkpoint(
            app=self.app.name, app_path=str(self.app.path) if self.app.path else None, step=self.step,
            config=to_dict(self.config), model=self.model.state_dict(),
            optimizer=self.optimizer.state_dict(), scheduler=self.scheduler.state_dict(),
            rng={"tensors": rng_tensors, "meta": rng_meta},
            state={"skipped_steps": self.skipped, "elapsed": elapsed, "data": self.stream.state(),
                   "last_metrics": self.last_metrics, "world": self.dist.world,
                   "window": self._window.state()},
            version=deqkit_version())

    def save(self, elapsed: float, periodic: bool) -> Path | None:
        if self.run is None:
            return None
        if not weights_finite(self.params):
            raise TrainingError(f"refusing to write a checkpoint at step {self.step}: the weights are not finite")
        ckpt = self.checkpoint(elapsed)
        save_checkpoint(self.run.last, ckpt)
        if periodic:
            save_checkpoint(self.run.periodic(self.step), ckpt)
            self.run.prune(self.train_cfg.keep_checkpoints)
        return self.run.last

    # ------------------------------------------------------------------------------------- loop

    def fit(self) -> RunResult:
        """Train up to ``train.steps`` steps; raises :class:`Interrupted` or :class:`TrainingError`."""
        cfg = self.train_cfg
        if self.run is not None:
            self.run.create()
            self.run.truncate_after(self.step)  # records of a run that died after its last checkpoint
            if self.preset is None and self.run.config.exists():  # a resumed run keeps its preset name
                self.preset = read_config(self.run.config).get("preset")
            self.run.write_config({"app": self.app.name, "app_path": str(self.app.path or ""),
                                   "preset": self.preset,
                                   "deqkit_version": deqkit_version(), "provenance": provenance(),
                                   "config": to_dict(self.config)})
        start_step, started = self.step, time.perf_counter()
        window = self._window
        bad_in_row, smooth = 0, math.nan  # smooth: moving average of the loss for the progress bar
        warned_unconverged = False
        self.reporter.start(cfg.steps, self.step)
        try:
            with _StopFlag() as stop:
                while self.step < cfg.steps:
                    loss, logs, bad, stop_all = self._step(stop.requested)
                    self.step += 1
                    window.add(loss, bad)
                    if bad:
                        self.skipped += 1
                        bad_in_row += 1
                        self.reporter.warn(f"step {self.step}: non-finite loss or gradient; step skipped "
                                           f"({bad_in_row} in a row, {self.skipped} in total)")
                        if bad_in_row >= cfg.max_bad_steps:
                            raise TrainingError(
                                f"stopping at step {self.step}: {bad_in_row} non-finite steps in a row "
                                f"(train.max_bad_steps={cfg.max_bad_steps}); the last good checkpoint is "
                                f"kept; try a lower train.lr or set train.grad_clip")
                    else:
                        bad_in_row = 0
                    elapsed = self.elapsed_before + time.perf_counter() - started
                    record: dict[str, Any] = {}
                    if self.step % cfg.log_every == 0 or self.step == cfg.steps:
                        record = self._log_record(window, logs, elapsed)
                        unconverged = {n: s for n, s in record.get("solver", {}).items()
                                       if s.get("converged", 1.0) < 1.0}
                        if unconverged and not warned_unconverged:
                            warned_unconverged = True
                            name, s = next(iter(unconverged.items()))
                            self.reporter.warn(
                                f"step {self.step}: solver of '{name}' did not converge for "
                                f"{100 * (1 - s['converged']):.0f}% of the batch (mean residual "
                                f"{s['residual']:.2e}); logged as solver.<name>.converged in metrics.jsonl")
                    final = self.step == cfg.steps
                    if self.dist.is_main and ((cfg.eval_every and self.step % cfg.eval_every == 0) or final):
                        self.last_metrics = self._evaluate()
                        record.setdefault("step", self.step)
                        record["eval"] = {"split": cfg.eval_split, **self.last_metrics}
                    if self.run is not None and ((cfg.image_every and self.step % cfg.image_every == 0)
                                                 or final):
                        self._visualize()
                    if record and self.run is not None:
                        record.setdefault("time", round(elapsed, 3))
                        self.run.append(record)
                    if cfg.ckpt_every and self.step % cfg.ckpt_every == 0 or final:
                        self.save(elapsed, periodic=bool(cfg.ckpt_every and self.step % cfg.ckpt_every == 0))
                    if not bad and math.isfinite(loss):
                        smooth = loss if math.isnan(smooth) else 0.9 * smooth + 0.1 * loss
                    self.reporter.advance(self.step, smooth,
                                          (self.step - start_step) / (time.perf_counter() - started))
                    if stop_all and not final:
                        path = self.save(elapsed, periodic=False)
                        where = f"; checkpoint saved to {path}; continue with --resume" if path else ""
                        raise Interrupted(f"interrupted at step {self.step}{where}")
            if not params_in_sync(self.model, self.dist):
                raise TrainingError("data-parallel ranks hold different parameters at the end of training")
        finally:
            self.reporter.stop()
            if self.run is not None:
                self.run.close()
        elapsed = self.elapsed_before + time.perf_counter() - started
        self._write_curves()
        done = self.step - start_step
        return RunResult(step=self.step, metrics=self.last_metrics, out=self.run.root if self.run else None,
                         checkpoint=self.run.last if self.run else None, skipped_steps=self.skipped,
                         elapsed=elapsed, steps_per_s=done / max(1e-9, time.perf_counter() - started),
                         eval_split=cfg.eval_split, solver=monitor.solver_stats(self.model))

    def _step(self, stop_requested: bool) -> tuple[float, dict[str, float], bool, bool]:
        """One optimiser step; returns (loss, app logs, skipped?, stop requested on any rank?).

        Under ``torchrun`` the ranks first sum (loss, non-finite?, stop?) in one small all-reduce, so a
        non-finite loss on any rank makes every rank skip the backward pass; DDP then averages the gradients
        during the backward pass, so the gradient-norm check gives the same answer on every rank.
        """
        cfg = self.train_cfg
        self.model.train()
        batch = to_device(next(self.stream), self.device)
        with collectives(self.dist, f"training step {self.step + 1}"):
            with autocast(self.device, cfg.amp), record_solves() as solves:
                loss, logs = self._loss(batch)
            self._direct_solves = solves  # direct deqkit.fixed_point calls: logged beside FixedPoint layers
            finite = bool(torch.isfinite(loss.detach()).all())
            scalars = agree(torch.tensor([loss.detach().float().item() if finite else 0.0,
                                          0.0 if finite else 1.0, float(stop_requested)]), self.dist)
            bad = scalars[1].item() > 0
            if not bad:
                try:
                    loss.backward()
                except torch.linalg.LinAlgError as err:  # a linear solve in the backward pass met NaN/Inf
                    if self.dist.enabled:  # the other ranks wait for this rank's gradients: no consistent skip
                        raise TrainingError(
                            f"rank {self.dist.rank}: step {self.step + 1}: a linear solve in the backward pass "
                            f"failed on this rank only ({' '.join(str(err).split())[:200]}); under torchrun "
                            f"this step cannot be skipped on every rank; the last good checkpoint is kept"
                        ) from None
                    finite, bad = False, True
                    self.optimizer.zero_grad(set_to_none=True)
        loss_value = scalars[0].item() / self.dist.world
        grad_norm = math.nan
        if not bad:
            grads = [p.grad for p in self.params if p.grad is not None]
            grad_norm = torch.nn.utils.get_total_norm(grads).item() if grads else 0.0
            bad = not math.isfinite(grad_norm)
        if bad:
            loss_value = loss_value if finite else math.nan
        else:
            if cfg.grad_clip is not None:
                torch.nn.utils.clip_grads_with_norm_(self.params, cfg.grad_clip, torch.tensor(grad_norm))
            self.optimizer.step()
            if not weights_finite(self.params):
                raise TrainingError(
                    f"step {self.step + 1} made the weights non-finite (train.lr={cfg.lr}, "
                    f"train.weight_decay={cfg.weight_decay}); stopped without writing a checkpoint from them, "
                    f"the checkpoints already written are kept; try a lower train.lr or set train.grad_clip")
        self.optimizer.zero_grad(set_to_none=True)
        with warnings.catch_warnings():
            # a skipped step leaves the optimiser unstepped on purpose; the schedule still follows the step count
            warnings.filterwarnings("ignore", message=r"Detected call of `lr_scheduler\.step\(\)` before",
                                    category=UserWarning)
            self.scheduler.step()
        self._grad_norm = grad_norm
        return loss_value, {k: float(v) for k, v in logs.items()}, bad, scalars[2].item() > 0

    def _log_record(self, window: "_Window", logs: dict[str, float], elapsed: float) -> dict[str, Any]:
        record: dict[str, Any] = {
            "step": self.step, "time": round(elapsed, 3), "loss": window.loss,
            "lr": self.optimizer.param_groups[0]["lr"], "grad_norm": self._grad_norm,
            "steps_per_s": window.rate(), "skipped_steps": self.skipped, "metrics": logs,
        }
        solver = monitor.solver_stats(self.model)
        solver.update(monitor.direct_solve_stats(self._direct_solves))
        if solver and self.train_cfg.spectral_iters and self._spectral_ok and self.dist.is_main:
            try:
                with autocast(self.device, self.train_cfg.amp):
                    norms = monitor.spectral_norms(self.model, self.train_cfg.spectral_iters)
            except Exception as err:  # a diagnostic must never stop training
                self.reporter.warn(f"spectral norm unavailable: {type(err).__name__}: {err}")
                self._spectral_ok = False
                norms = {}
            for name, values in norms.items():
                solver.setdefault(name, {}).update(values)
        if solver:
            record["solver"] = solver
        window.reset()
        return record

    def _evaluate(self) -> dict[str, float]:
        if self._eval_set is None:
            self._eval_set = self.app.build_dataset(self.config, self.train_cfg.eval_split)
        return evaluate(self.app, self.model, self.config, self.train_cfg.eval_split, self.device,
                        limit=self.train_cfg.eval_batches, dataset=self._eval_set)

    def _visualize(self) -> None:
        if self.app.visualize is None or self.run is None:
            return
        if self._eval_set is None:
            self._eval_set = self.app.build_dataset(self.config, self.train_cfg.eval_split)
        from deqkit.train.data import eval_batches

        batch = next(iter(eval_batches(self._eval_set, min(16, self.train_cfg.batch_size), 1, self.app.collate)))
        was_training = self.model.training
        self.model.eval()
        try:
            with torch.random.fork_rng(devices=[]), torch.no_grad():
                self.app.visualize(self.model, to_device(batch, self.device), self.config,
                                   self.run.images / f"step_{self.step:07d}.png")
        finally:
            self.model.train(was_training)

    def _write_curves(self) -> None:
        """images/training.png: loss, and each fixed point's NFE and spectral norm, over the steps."""
        if self.run is None:
            return
        try:
            from deqkit.plots import save_curves
        except ImportError:
            return
        records = [r for r in self.run.records() if r.get("loss") is not None]
        if len(records) < 2:
            return
        steps = [r["step"] for r in records]
        save_curves(self.run.images / "loss.png", {"train loss": (steps, [r["loss"] for r in records])},
                    title=f"{self.app.name}: training loss", xlabel="step", ylabel="loss", logy=True)


class _Window:
    """Loss mean and steps/s since the last log line."""

    def __init__(self) -> None:
        self.reset()

    def reset(self) -> None:
        self.total, self.count, self.t0, self.steps = 0.0, 0, time.perf_counter(), 0
        self.loss = math.nan

    def add(self, loss: float, bad: bool) -> None:
        self.steps += 1
        if not bad and math.isfinite(loss):
            self.total += loss
            self.count += 1
            self.loss = self.total / self.count

    def state(self) -> dict[str, float]:
        """The running loss sum, so a resumed run logs the same window means."""
        return {"total": self.total, "count": self.count, "steps": self.steps}

    def load_state(self, state: dict[str, float]) -> None:
        self.total, self.count = float(state.get("total", 0.0)), int(state.get("count", 0))
        self.steps = int(state.get("steps", 0))
        self.loss = self.total / self.count if self.count else math.nan

    def rate(self) -> float:
        return self.steps / max(1e-9, time.perf_counter() - self.t0)


class Reporter:
    """Receives progress and warnings; this base class stays silent (the CLI's shows a rich progress bar)."""

    def start(self, total: int, completed: int) -> None:
        pass

    def advance(self, step: int, loss: float, rate: float) -> None:
        pass

    def warn(self, message: str) -> None:
        pass

    def stop(self) -> None:
        pass


def train(app: Application, config: Any, out: str | Path | None, *, resume: Checkpoint | None = None,
          reporter: Reporter | None = None, preset: str | None = None) -> RunResult:
    """Build a :class:`Trainer` and run it (leaving the process group, if any, on the way out)."""
    trainer = Trainer(app, config, out, resume=resume, reporter=reporter, preset=preset)
    try:
        return trainer.fit()
    finally:
        shutdown(trainer.dist)
