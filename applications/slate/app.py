"""The SLATE application: config, presets, and the functions the trainer calls."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import torch
import torch.nn.functional as F

from deqkit.data import ImageFolderDataset, SceneConfig, SceneDataset
from deqkit.metrics import fg_ari, fg_ari_undefined, matched_miou
from deqkit.plots import save_slot_grid
from deqkit.train import Application, ConfigError, TrainConfig
from deqkit.train.config import Iterations

from .model import Slate, slate_loss

Batch = dict[str, torch.Tensor]


@dataclass
class SlateConfig:
    """SLATE on procedural scenes (or a folder of images); ``train.lr`` is the lr of everything but the
    dVAE, which trains at ``dvae_lr`` without warm-up (as in the paper)."""

    train: TrainConfig = field(default_factory=TrainConfig)
    data: SceneConfig = field(default_factory=SceneConfig)
    folder: str | None = None  # read images from this folder (70/15/15 split) instead of procedural scenes
    folder_masks: str | None = None  # optional instance-id PNGs for the folder's images (FG-ARI, mIoU)
    vocab_size: int = 64
    patch: int = 4
    dvae_hidden: int = 64
    dvae_lr: float = 3e-4
    tau_start: float = 1.0
    tau_end: float = 0.1
    tau_steps: int = 30_000  # cosine anneal of the Gumbel-softmax temperature over this many steps
    d_model: int = 64
    num_heads: int = 4
    num_blocks: int = 2
    dropout: float = 0.1
    token_convs: int = 0  # 3x3 convolutions over the token-embedding grid before slot attention (0: SLATE)
    slot_positions: Literal["learned", "soft"] = "learned"  # positions slot attention reads (soft: linear in y, x)
    decoder: Literal["gpt", "mixture"] = "gpt"  # image-GPT (SLATE) or a slot-mixture of token distributions
    context_dropout: float = 0.0  # hide earlier tokens from the decoder with this probability (1: parallel)
    num_slots: int = 5
    slot_dim: int = 64
    mlp_hidden: int = 128
    iters: Iterations = 3
    init: Literal["gaussian", "learned"] = "gaussian"
    solver: Literal["iteration", "anderson", "broyden"] = "iteration"
    backward: Literal["unrolled", "neumann", "ift", "phantom"] = "neumann"
    tol: float | None = None
    eval_generate: bool = True  # metrics decode tokens from the slots (the slot reconstruction's MSE)
    # where FG-ARI's masks come from: the final slots, or SLATE's last iteration (slots one update earlier)
    masks: Literal["final", "last_iteration"] = "final"
    dvae_blocks: Literal["conv", "slate"] = "conv"  # slate: SLATE's GroupNorm blocks (docs/nn.md)
    gpt_activation: Literal["gelu", "relu"] = "gelu"  # the image-GPT's MLP (SLATE's code: relu)
    gaussian_init: Literal["normal", "keras_glorot", "torch_xavier"] = "normal"  # init=gaussian (SLATE: torch_xavier)

    def __post_init__(self) -> None:
        if self.token_convs < 0:
            raise ConfigError(f"token_convs must be >= 0, got {self.token_convs}")
        for name in ("vocab_size", "dvae_hidden", "d_model", "num_heads", "num_blocks", "num_slots", "slot_dim",
                     "mlp_hidden", "iters", "tau_steps"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.data.image_size % self.patch:
            raise ConfigError(f"data.image_size={self.data.image_size} must be a multiple of patch={self.patch}")
        if self.d_model % self.num_heads:
            raise ConfigError(f"d_model={self.d_model} must be divisible by num_heads={self.num_heads}")
        if not 0.0 <= self.context_dropout <= 1.0:
            raise ConfigError(f"context_dropout must be in [0, 1], got {self.context_dropout}")
        if self.folder_masks is not None and self.folder is None:
            raise ConfigError("folder_masks needs folder")
        if self.masks == "last_iteration" and (self.solver != "iteration" or self.tol is not None):
            raise ConfigError("masks=last_iteration needs solver=iteration and tol=none (a fixed number of "
                              "plain iterations has a last one)")


def _train(**kw: Any) -> dict[str, Any]:
    return kw


PRESETS: dict[str, dict[str, Any]] = {
    # seconds: for tests of the application, the trainer and the CLI
    "smoke": {
        "train": _train(steps=6, batch_size=4, lr=1e-3, log_every=2, eval_every=3, eval_batches=1, ckpt_every=3,
                        image_every=3, spectral_iters=2, grad_clip=1.0),
        "data": {"image_size": 16, "min_objects": 1, "max_objects": 2, "size_range": (0.2, 0.3),
                 "train_size": 64, "val_size": 8, "test_size": 8},
        "vocab_size": 16, "dvae_hidden": 8, "dvae_lr": 1e-3, "tau_steps": 6, "d_model": 16, "num_heads": 2,
        "num_blocks": 1, "num_slots": 3, "slot_dim": 16, "mlp_hidden": 16,
    },
    # SLATE as published (image-GPT decoder) at CPU scale: 11.4 min vanilla / 11.8 min implicit on one core;
    # test FG-ARI 0.26 / 0.24 (seed 0): the decoder predicts tokens from their neighbours and ignores the slots
    # (docs/slate.md). Palette colours: after 800 steps a 64-token vocabulary still drew random-hue objects
    # grey. 2000 steps left the slots unused (val FG-ARI 0.22, greedy slot reconstructions all background).
    "cpu_gpt": {
        "train": _train(steps=5000, batch_size=16, lr=4e-4, warmup=500, decay="cosine", grad_clip=1.0,
                        log_every=50, eval_every=2500, eval_batches=4, ckpt_every=2500, image_every=2500,
                        spectral_iters=3),
        "data": {"image_size": 48, "min_objects": 2, "max_objects": 4, "colors": "palette", "train_size": 1_000_000},
        "vocab_size": 64, "dvae_hidden": 32, "dvae_lr": 1e-3, "tau_steps": 2500, "d_model": 64, "num_heads": 4,
        "num_blocks": 2, "dropout": 0.0, "num_slots": 5, "slot_dim": 64, "mlp_hidden": 128, "iters": 3,
    },
    # the CPU default (`deqkit train slate`): cpu_gpt with the decoder swapped for the slot-mixture token
    # decoder, which cannot predict a token from its neighbours, so the slots must carry the image; slot
    # attention reads soft (linear in y, x) positions through one 3x3 convolution over the token grid and
    # starts from learned queries; lr 1e-3, warm-up 200. Each change was screened (docs/slate.md,
    # "Attempts"); 13-15 min on one core; test FG-ARI 0.771 / 0.743 / 0.742 on seeds 0-2 (implicit).
    "cpu": {
        "train": _train(steps=6000, batch_size=16, lr=1e-3, warmup=200, decay="cosine", grad_clip=1.0,
                        log_every=50, eval_every=1500, eval_batches=4, ckpt_every=1500, image_every=1500,
                        spectral_iters=3),
        "data": {"image_size": 48, "min_objects": 2, "max_objects": 4, "colors": "palette", "train_size": 1_000_000},
        "vocab_size": 64, "dvae_hidden": 32, "dvae_lr": 1e-3, "tau_steps": 3000, "d_model": 64, "num_heads": 4,
        "num_blocks": 2, "dropout": 0.0, "num_slots": 5, "slot_dim": 64, "mlp_hidden": 128, "iters": 3,
        "decoder": "mixture", "slot_positions": "soft", "init": "learned", "token_convs": 1,
    },
    # SLATE as published (vanilla: backprop through the 3 iterations), field by field against singhgautam/slate's
    # train.py, slate.py, slot_attn.py, dvae.py, utils.py and transformer.py in docs/slate.md ("The paper presets").
    # Constant learning rates (the dVAE's from step 0, the rest after a 30k-step linear warm-up). Not expressible
    # here: SLATE halves both on a 4-epoch validation plateau, and clips the max-abs gradient entry to 1 (deqkit
    # clips the global L2 norm to 1). 128 px, 7 slots, slot size 256, slot MLP 1024, 250k steps: the code's
    # defaults are 64 px, 3 slots, 192, 192, 20 epochs (3D Shapes); the paper's appendix cannot be read here.
    # For a GPU; images from a folder: --set folder=PATH.
    "paper": {
        "train": _train(steps=250_000, batch_size=50, lr=1e-4, warmup=30_000, decay="none", grad_clip=1.0,
                        log_every=100, eval_every=10_000, eval_batches=16, ckpt_every=10_000, image_every=10_000,
                        num_threads=None, device="auto"),
        "data": {"image_size": 128},
        "vocab_size": 1024, "patch": 4, "dvae_hidden": 64, "dvae_lr": 3e-4, "dvae_blocks": "slate",
        "tau_start": 1.0, "tau_end": 0.1, "tau_steps": 30_000, "d_model": 192, "num_heads": 4, "num_blocks": 4,
        "dropout": 0.1, "gpt_activation": "relu", "decoder": "gpt", "slot_positions": "learned", "token_convs": 0,
        "num_slots": 7, "slot_dim": 256, "mlp_hidden": 1024, "iters": 3, "init": "gaussian",
        "gaussian_init": "torch_xavier", "solver": "iteration", "backward": "unrolled", "masks": "last_iteration",
    },
}
# the seed paper's variant (Chang, Griffiths & Levine, NeurIPS 2022): SLATE with implicit slot attention (the
# forward iterations without a graph, then one differentiable step from the detached slots); nothing else changes
PRESETS["paper_implicit"] = {**PRESETS["paper"], "backward": "neumann"}


def build_model(cfg: SlateConfig) -> Slate:
    return Slate(cfg.data.image_size, cfg.vocab_size, cfg.patch, cfg.dvae_hidden, cfg.d_model, cfg.num_heads,
                 cfg.num_blocks, cfg.dropout, cfg.num_slots, cfg.slot_dim, cfg.mlp_hidden, cfg.iters,
                 solver=cfg.solver, backward=cfg.backward, tol=cfg.tol, init=cfg.init,
                 tau=(cfg.tau_start, cfg.tau_end, cfg.tau_steps),
                 context_dropout=cfg.context_dropout, decoder=cfg.decoder,
                 slot_positions=cfg.slot_positions, token_convs=cfg.token_convs, masks=cfg.masks,
                 dvae_blocks=cfg.dvae_blocks, gpt_activation=cfg.gpt_activation, gaussian_init=cfg.gaussian_init)


def build_dataset(cfg: SlateConfig, split: str) -> torch.utils.data.Dataset:
    if cfg.folder is not None:
        return ImageFolderDataset(cfg.folder, split, cfg.data.image_size, cfg.folder_masks, seed=cfg.data.seed)
    return SceneDataset(cfg.data, split)


def param_groups(model: Slate, cfg: SlateConfig) -> list[dict[str, Any]]:
    """The dVAE at ``dvae_lr`` without warm-up; the rest at ``train.lr`` with ``train.warmup``."""
    rest = [p for name, p in model.named_parameters() if not name.startswith("dvae.")]
    return [{"params": list(model.dvae.parameters()), "lr": cfg.dvae_lr, "warmup": 0}, {"params": rest}]


def loss(model: Slate, batch: Batch, cfg: SlateConfig) -> tuple[torch.Tensor, dict[str, float]]:
    return slate_loss(model, model(batch["image"]), batch["image"])


def slot_masks(masks: torch.Tensor, size: int) -> torch.Tensor:
    """Slot masks ``[B,K,T]`` over the token grid -> ``[B,K,size,size]`` (nearest upsampling)."""
    side = int(masks.shape[-1] ** 0.5)
    return F.interpolate(masks.unflatten(-1, (side, side)), size=(size, size), mode="nearest")


def metrics(model: Slate, batch: Batch, cfg: SlateConfig) -> dict[str, torch.Tensor]:
    """Per image: token cross-entropy (nats per token) with its own and with another image's slots, squared
    error summed over the image of the dVAE's and (with ``eval_generate``) the slot reconstruction, FG-ARI and
    matched mIoU of the attention masks (and FG-ARI of the mixture decoder's masks)."""
    image = batch["image"]
    out = model(image)
    ce = F.cross_entropy(out["logits"].float().transpose(1, 2), out["tokens"], reduction="none").mean(1)
    # the same with each image's slots swapped for another image's: how much the decoder uses the slots
    # (in a batch of one image they are its own)
    other = model.token_logits(out["tokens"], out["slots"].roll(1, dims=0))
    ce_other = F.cross_entropy(other.float().transpose(1, 2), out["tokens"], reduction="none").mean(1)
    result = {"ce": ce, "ce_other_slots": ce_other,
              "dvae_mse": (out["dvae"]["recon"].float() - image).square().flatten(1).sum(1)}
    if cfg.eval_generate:
        result["mse"] = (model.reconstruct(out["slots"]).float() - image).square().flatten(1).sum(1)
    if "mask" in batch:
        masks = slot_masks(out["masks"].float(), image.shape[-1])
        result |= {"fg_ari": fg_ari(batch["mask"], masks), "miou": matched_miou(batch["mask"], masks),
                   "fg_ari_undefined": fg_ari_undefined(batch["mask"], masks).float()}
        if "decoder_masks" in out:  # the mixture decoder's own masks, scored the same way
            masks = slot_masks(out["decoder_masks"].float(), image.shape[-1])
            result |= {"fg_ari_decoder": fg_ari(batch["mask"], masks)}
    return result


def visualize(model: Slate, batch: Batch, cfg: SlateConfig, path: Path) -> None:
    """Input | dVAE reconstruction | slot reconstruction | each slot's attention mask (grey)."""
    image = batch["image"][:8]
    out = model(image)
    masks = slot_masks(out["masks"].float(), image.shape[-1])
    save_slot_grid(path, image, out["dvae"]["recon"].float(), masks, recon_title="dVAE",
                   extra=[("slots", model.reconstruct(out["slots"]).float())])


APP = Application(
    name="slate",
    description="SLATE: dVAE tokens, slot attention (vanilla or implicit), image-GPT decoder",
    config_type=SlateConfig,
    presets=PRESETS,
    default_preset="cpu",
    build_model=build_model,
    build_dataset=build_dataset,
    loss=loss,
    metrics=metrics,
    visualize=visualize,
    param_groups=param_groups,
)
