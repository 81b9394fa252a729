"""Set prediction: object properties from images (slot attention or DSPN) and random set autoencoding (DSPN).

Task ``properties`` (Locatello et al. 2020 §4.2; Zhang et al. 2022 §4.3): predict every object of a
procedural scene — shape, colour (the 8-colour palette), size class, x/y and presence — scored by average
precision at the distance thresholds inf, 1, 0.5, 0.25, 0.125. Distances are in *scene units*: x and y
are fractions of the image side times 6, the width of CLEVR's [-3, 3] coordinate range that these
thresholds were made for (so 0.125 units is 1/48 of the image side, 0.67 px at 32 px). Size classes: with
``data.size_values`` (the presets: two radii, like CLEVR's small and large) the class is the index of the
value; otherwise ``size_bins`` equal-width bins over ``data.size_range``.

Task ``random_sets`` (Zhang et al. 2022 §4.2): autoencode sets of n elements of dimension d drawn from
N(0, 1), fresh for every training step; a DSPN decoder; Hungarian-matched smooth-L1. The trivial baseline
predicts every element at the mean (0); ``baseline_ratio`` is the model's loss over the baseline's.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal, Mapping

import numpy as np
import torch
from torch.utils.data import Dataset

from deqkit.data import SceneConfig, SceneDataset
from deqkit.data.scenes import PALETTE
from deqkit.metrics.set_prediction import THRESHOLDS, average_precision, threshold_name, tied_predictions
from deqkit.train import Application, ConfigError, TrainConfig
from deqkit.train.config import DatasetSize, Iterations

from .model import (DSPNPropertyPredictor, Layout, SetAutoencoder, SlotPropertyPredictor, matched_loss, pair_losses,
                    set_matched_smooth_l1)

SCENE_UNITS = 6.0  # scene units per image side (CLEVR's x, y span [-3, 3])
Batch = Any


@dataclass
class RandomSetConfig:
    """Sets of ``set_size`` elements of dimension ``dim`` from N(0, 1); item i of a split is a function of
    (seed, split, i), and the train split is large enough that every step sees new sets."""

    set_size: int = 4
    dim: int = 2
    seed: int = 0
    train_size: DatasetSize = 1_000_000
    val_size: DatasetSize = 1000
    test_size: DatasetSize = 1000

    def __post_init__(self) -> None:
        for name in ("set_size", "dim", "train_size", "val_size", "test_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"sets.{name} must be >= 1, got {getattr(self, name)}")


@dataclass
class SetPredictionConfig:
    """``task`` picks the data and the model; ``decoder`` the set predictor of the image task.

    ``iters`` is the number of slot-attention or DSPN updates in training, ``test_iters`` (if set) in
    evaluation; ``backward`` the gradient (``unrolled``: vanilla slot attention / DSPN; ``neumann``:
    implicit slot attention / iDSPN's approximate implicit differentiation; ``ift``: exact implicit).
    """

    train: TrainConfig = field(default_factory=TrainConfig)
    task: Literal["properties", "random_sets"] = "properties"
    data: SceneConfig = field(default_factory=lambda: SceneConfig(
        image_size=32, min_objects=2, max_objects=4, shapes=("disc", "square", "triangle"), colors="palette",
        size_values=(0.12, 0.2), train_size=1_000_000))
    sets: RandomSetConfig = field(default_factory=RandomSetConfig)
    decoder: Literal["slot_attention", "dspn"] = "slot_attention"
    size_bins: int = 2  # size classes when data.size_values is empty
    num_slots: int = 4  # predicted objects per image (>= data.max_objects)
    slot_dim: int = 64
    channels: int = 32
    mlp_hidden: int = 128
    encoder_layers: int = 4
    encoder_kernel: int = 3
    encoder_downsample: int = 1
    init: Literal["gaussian", "learned"] = "learned"  # slot attention's start
    iters: Iterations = 3
    test_iters: Iterations | None = None
    solver: Literal["iteration", "anderson", "broyden"] = "iteration"
    backward: Literal["unrolled", "neumann", "ift", "phantom"] = "neumann"
    tol: float | None = None
    coord_weight: float = 10.0  # weight of the smooth-L1 on x, y (image-side fractions) in the matched loss
    # DSPN
    latent: int = 128  # code z
    set_hidden: int = 128  # width of the set encoders
    inner_lr: float = 1.0  # DSPN's inner step size (the inner objective averages over entries, as iDSPN's)
    inner_reg: float = 0.1  # weight of ½‖Y − Y0‖² in the inner objective (iDSPN with a learned start: 0.1)
    inner_momentum: float = 0.0  # Nesterov momentum of the inner steps (iDSPN's default: 0.9)
    # per_sample: iDSPN's ½‖enc(Y) − z‖² per sample; batch_mean: the reference DSPN's Huber loss averaged over
    # the batch, so a sample's inner steps scale with 1/batch size (their inner lr: 800; docs/set_prediction.md)
    inner_objective: Literal["per_sample", "batch_mean"] = "per_sample"
    share_encoder: bool = False  # random sets: one encoder for the input and the inner objective (DSPN)
    pool: Literal["fspool", "sum"] = "fspool"

    def __post_init__(self) -> None:
        for name in ("num_slots", "slot_dim", "channels", "mlp_hidden", "encoder_layers", "encoder_kernel", "iters",
                     "latent", "set_hidden", "size_bins"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.test_iters is not None and self.test_iters < 1:
            raise ConfigError(f"test_iters must be >= 1 or none, got {self.test_iters}")
        if self.task == "properties":
            if self.num_slots < self.data.max_objects:
                raise ConfigError(f"num_slots={self.num_slots} must be >= data.max_objects={self.data.max_objects}")
            if self.data.colors != "palette":
                raise ConfigError("the properties task classifies colours from the 8-colour palette: "
                                  "use data.colors=palette")
            if self.data.image_size % 2**self.encoder_downsample:
                raise ConfigError(f"data.image_size={self.data.image_size} must be divisible by "
                                  f"2**encoder_downsample={2**self.encoder_downsample}")
        elif self.decoder != "dspn":
            raise ConfigError("task=random_sets has a DSPN decoder only: set decoder=dspn")


def _train(**kw: Any) -> dict[str, Any]:
    return kw


_SMOKE_TRAIN = _train(steps=4, batch_size=8, lr=1e-3, log_every=2, eval_every=2, eval_batches=1, ckpt_every=2,
                      image_every=2, spectral_iters=2)
_SMOKE_DATA = {"image_size": 16, "val_size": 16, "test_size": 16, "train_size": 64}

# one core, <= ~8 minutes each (timings and results in docs/set_prediction.md)
_CPU_TRAIN = _train(steps=4000, batch_size=32, lr=1e-3, warmup=100, log_every=50, eval_every=500, eval_batches=8,
                    ckpt_every=1000, keep_checkpoints=5, image_every=2000, spectral_iters=3)

PRESETS: dict[str, dict[str, Any]] = {
    # seconds: for tests of the application and the CLI
    "smoke": {"train": _SMOKE_TRAIN, "data": _SMOKE_DATA, "slot_dim": 16, "channels": 8, "mlp_hidden": 16,
              "encoder_layers": 2},
    "smoke_dspn": {"train": _SMOKE_TRAIN, "data": _SMOKE_DATA, "decoder": "dspn", "channels": 8, "latent": 16,
                   "set_hidden": 16, "encoder_layers": 2, "iters": 3},
    "smoke_sets": {"train": _SMOKE_TRAIN, "task": "random_sets", "decoder": "dspn", "latent": 16, "set_hidden": 16,
                   "iters": 3, "sets": {"set_size": 4, "dim": 2, "val_size": 16, "test_size": 16}},
    # CPU presets (one core each): numbers in docs/set_prediction.md
    # 16000 steps: test AP@inf 0.945 / 0.924 / 0.919 on seeds 0 / 1 / 2 in 8.7-10.1 min (8000: 0.905 / 0.836 / 0.781)
    "cpu": {"train": {**_CPU_TRAIN, "steps": 16000, "eval_every": 1000, "ckpt_every": 2000}, "test_iters": 10},
    "cpu_dspn": {"train": _CPU_TRAIN, "decoder": "dspn", "iters": 10},
    "cpu_sets_4x2": {"train": {**_CPU_TRAIN, "batch_size": 64}, "task": "random_sets", "decoder": "dspn", "iters": 10,
                     "sets": {"set_size": 4, "dim": 2}},
    # one encoder for input and inner objective (DSPN's layout): test ratio 0.29 vs 0.48 with iDSPN's two
    "cpu_sets_8x8": {"train": {**_CPU_TRAIN, "batch_size": 64}, "task": "random_sets", "decoder": "dspn", "iters": 10,
                     "sets": {"set_size": 8, "dim": 8}, "share_encoder": True},
    # Locatello et al. 2020, google-research/slot_attention set_prediction/train.py and model.py: 128 px CLEVR,
    # 10 slots, 3 iterations, batch 512, lr 4e-4, 1000 warm-up steps, 150k steps (their lr halves every 100k
    # steps; ours decays with a cosine), a 4-layer 5x5 64-channel CNN with two stride-2 layers.
    "paper": {"train": _train(steps=150_000, batch_size=512, lr=4e-4, warmup=1000, log_every=100, eval_every=5000,
                              eval_batches=16, ckpt_every=5000, image_every=5000, num_threads=None, device="auto"),
              "data": {"image_size": 128, "min_objects": 3, "max_objects": 10, "size_range": (0.05, 0.1),
                       "size_values": (0.05, 0.1), "train_size": 70_000},
              "num_slots": 10, "iters": 3, "slot_dim": 64, "channels": 64, "mlp_hidden": 128, "encoder_kernel": 5,
              "encoder_downsample": 2, "init": "gaussian", "backward": "unrolled"},
    # Zhang et al. 2022 (iDSPN), davzha/multiset-equivariance exp2_scripts/run_single.sh and train_exp2.py:
    # 64000 N(0,1) sets, batch 128, Adam lr 1e-3, 40 epochs (20k steps), latent and hidden 512, FSPool,
    # inner lr 1, 20 inner steps (10/20/40 swept), learned start set with the 0.1 regulariser (models.py,
    # idspn.py); their default adds Nesterov momentum 0.9 to the inner steps (plain gradient descent here,
    # their `idspn_no_momentum` variant).
    "paper_sets": {"train": _train(steps=20_000, batch_size=128, lr=1e-3, log_every=100, eval_every=2000,
                                   ckpt_every=2000, image_every=2000, decay="none", num_threads=None, device="auto"),
                   "task": "random_sets", "decoder": "dspn", "iters": 20, "latent": 512, "set_hidden": 512,
                   "inner_lr": 1.0, "sets": {"set_size": 8, "dim": 8}},
}


# --------------------------------------------------------------------------------------------- data


class RandomSets(Dataset):
    """Split ``split`` of random N(0, 1) sets ``[n, d]``; item i is a function of (seed, split, i)."""

    SPLITS = ("train", "val", "test")

    def __init__(self, cfg: RandomSetConfig, split: str):
        self.cfg, self.split = cfg, split
        self.split_id = self.SPLITS.index(split)

    def __len__(self) -> int:
        return getattr(self.cfg, f"{self.split}_size")

    def __getitem__(self, index: int) -> torch.Tensor:
        rng = np.random.default_rng([self.cfg.seed, self.split_id, int(index)])
        return torch.from_numpy(rng.standard_normal((self.cfg.set_size, self.cfg.dim)).astype(np.float32))


def layout(cfg: SetPredictionConfig) -> Layout:
    sizes = len(cfg.data.size_values) or cfg.size_bins
    return Layout(classes=(len(cfg.data.shapes), len(PALETTE), sizes))


def targets(batch: dict[str, torch.Tensor], cfg: SetPredictionConfig) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The true objects padded to ``num_slots`` rows: classes ``[B,K,3]`` (shape, colour, size; -1 where
    absent), x/y ``[B,K,2]`` in image-side fractions, present ``[B,K]``."""
    present = batch["present"]
    colour = (batch["color"][..., None, :] - torch.as_tensor(PALETTE, device=present.device)).square().sum(-1).argmin(-1)
    if cfg.data.size_values:
        values = torch.as_tensor(cfg.data.size_values, device=present.device, dtype=batch["size"].dtype)
        size = (batch["size"][..., None] - values).abs().argmin(-1)
    else:
        lo, hi = cfg.data.size_range
        size = ((batch["size"] - lo) / max(hi - lo, 1e-12) * cfg.size_bins).long().clamp(0, cfg.size_bins - 1)
    classes = torch.stack([batch["shape"], colour, size], -1).masked_fill(~present[..., None], -1)
    xy = torch.stack([batch["x"], batch["y"]], -1)
    pad = cfg.num_slots - present.shape[1]
    if pad:
        classes = torch.cat([classes, classes.new_full((*classes.shape[:1], pad, 3), -1)], 1)
        xy = torch.cat([xy, xy.new_zeros(xy.shape[0], pad, 2)], 1)
        present = torch.cat([present, present.new_zeros(present.shape[0], pad)], 1)
    return classes, xy, present


# -------------------------------------------------------------------------------- the five functions


def build_model(cfg: SetPredictionConfig) -> torch.nn.Module:
    common = dict(solver=cfg.solver, backward=cfg.backward, tol=cfg.tol, test_iters=cfg.test_iters)
    if cfg.task == "random_sets":
        return SetAutoencoder(cfg.sets.set_size, cfg.sets.dim, cfg.set_hidden, cfg.latent, cfg.iters,
                              inner_lr=cfg.inner_lr, inner_reg=cfg.inner_reg, inner_momentum=cfg.inner_momentum, pool=cfg.pool,
                              share_encoder=cfg.share_encoder, inner_objective=cfg.inner_objective, **common)
    encoder = dict(encoder_layers=cfg.encoder_layers, encoder_kernel=cfg.encoder_kernel,
                   encoder_downsample=cfg.encoder_downsample)
    if cfg.decoder == "dspn":
        return DSPNPropertyPredictor(layout(cfg), cfg.data.image_size, cfg.num_slots, cfg.channels, cfg.latent,
                                     cfg.set_hidden, cfg.iters, inner_lr=cfg.inner_lr, inner_reg=cfg.inner_reg,
                                     inner_momentum=cfg.inner_momentum, pool=cfg.pool, **encoder,
                                     inner_objective=cfg.inner_objective, **common)
    return SlotPropertyPredictor(layout(cfg), cfg.num_slots, cfg.slot_dim, cfg.channels, cfg.mlp_hidden, cfg.iters,
                                 init=cfg.init, **encoder, **common)


def build_dataset(cfg: SetPredictionConfig, split: str) -> Dataset:
    return RandomSets(cfg.sets, split) if cfg.task == "random_sets" else SceneDataset(cfg.data, split)


def _property_losses(model: torch.nn.Module, batch: Batch, cfg: SetPredictionConfig) -> tuple[dict[str, Any], torch.Tensor]:
    out = model(batch["image"])
    classes, xy, present = targets(batch, cfg)
    cost = pair_losses(out["rows"].float(), layout(cfg), classes, xy, present, cfg.coord_weight)
    return out, matched_loss(cost)


def loss(model: torch.nn.Module, batch: Batch, cfg: SetPredictionConfig) -> tuple[torch.Tensor, dict[str, float]]:
    if cfg.task == "random_sets":
        out = model(batch)
        value = set_matched_smooth_l1(out["set"].float(), batch).mean()
    else:
        out, per_sample = _property_losses(model, batch, cfg)
        value = per_sample.mean()
    return value, {"nfe": out["info"].nfe.float().mean().item()}


def metrics(model: torch.nn.Module, batch: Batch, cfg: SetPredictionConfig) -> dict[str, torch.Tensor]:
    """Random sets: matched smooth-L1 and the mean-set baseline's, per set. Properties: matched loss and
    whether the predicted object count is right, per image, plus the predictions and targets (``_`` keys)
    from which :func:`summarize` ranks all objects of the split for AP."""
    if cfg.task == "random_sets":
        out = model(batch)
        return {"set_loss": set_matched_smooth_l1(out["set"].float(), batch),
                "baseline_loss": set_matched_smooth_l1(torch.zeros_like(batch), batch)}
    out, per_sample = _property_losses(model, batch, cfg)
    xy, logits, presence = layout(cfg).split(out["rows"].float())
    classes, true_xy, present = targets(batch, cfg)
    conf = presence.sigmoid()
    return {"loss": per_sample,
            "count_accuracy": ((conf > 0.5).sum(1) == present.sum(1)).float(),
            "_confidence": conf, "_classes": torch.stack([lg.argmax(-1) for lg in logits], -1),
            "_xy": xy * SCENE_UNITS, "_true_classes": classes, "_true_xy": true_xy * SCENE_UNITS, "_present": present}


def summarize(outputs: list[Mapping[str, torch.Tensor]], cfg: SetPredictionConfig) -> dict[str, float]:
    """Random sets: the loss over the mean-set baseline's. Properties: AP at every threshold, and
    ``ap_tied_predictions``, how many predictions share their confidence with another (their order is the
    reference's; docs/metrics.md)."""
    cat = lambda key: torch.cat([o[key] for o in outputs])  # noqa: E731
    if cfg.task == "random_sets":
        return {"baseline_ratio": float(cat("set_loss").sum() / cat("baseline_loss").sum())}
    aps = average_precision(cat("_confidence"), cat("_classes"), cat("_xy"), cat("_true_classes"), cat("_true_xy"),
                            cat("_present"), THRESHOLDS)
    tied = tied_predictions(cat("_confidence"))
    return {threshold_name(t): v for t, v in aps.items()} | {"ap_tied_predictions": tied}


def visualize(model: torch.nn.Module, batch: Batch, cfg: SetPredictionConfig, path: Path) -> None:
    from .pictures import save_object_overlay, save_point_sets

    if cfg.task == "random_sets":
        save_point_sets(path, batch, model(batch)["set"].float())
        return
    values = metrics(model, batch, cfg)
    save_object_overlay(path, batch["image"], cfg.data.shapes, cfg.data.size_values or None, SCENE_UNITS,
                        values["_confidence"], values["_classes"], values["_xy"],
                        values["_true_classes"], values["_true_xy"], values["_present"])


APP = Application(
    name="set_prediction",
    description="set prediction: object properties (slot attention or DSPN, AP) and random sets (DSPN/iDSPN)",
    config_type=SetPredictionConfig,
    presets=PRESETS,
    default_preset="cpu",
    build_model=build_model,
    build_dataset=build_dataset,
    loss=loss,
    metrics=metrics,
    summarize=summarize,
    visualize=visualize,
)

