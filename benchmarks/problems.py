"""A registry of seeded fixed-point problems for the performance benchmarks (``suite.py``, ``gradients.py``).

Each problem is a step ``step(z, *inputs) -> z`` on a flat ``[B, D]`` state with per-sample ``inputs`` (batch
first, so deqkit can evaluate the step on a subset of samples), a start ``z0`` and a description. Every
builder is deterministic (fixed seeds): the NFE of a solver on a problem is the same on every run.

Add a problem with the ``@problem`` decorator; ``quick=True`` asks for a small version (tests):

    @problem("my_problem")
    def my_problem(quick: bool) -> Problem:
        ...
        return Problem("my_problem", step, z0, inputs, "what it is")

The SLATE and DSPN inner problems are registered below at initialisation (seeded), like ``slot_attention_init``.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable

import torch

DATA = Path(__file__).parent / "data"
# slot attention cpu preset trained for 2000 steps (seed 0, 22 min on one shared core, val FG-ARI 0.71);
# optimizer state dropped. Retrain: python -m deqkit train applications/slot_attention --preset cpu
#   --set train.steps=2000 --out runs/sa2000   (then prune with deqkit.train.checkpoint, see benchmarks/data)
TRAINED_SLOT_ATTENTION = DATA / "slot_attention_cpu_2000steps.safetensors"


@dataclass
class Problem:
    """``step(z [B, D], *inputs) -> [B, D]`` with fixed point(s) z*; ``z0`` [B, D] is where solvers start."""

    name: str
    step: Callable[..., torch.Tensor]
    z0: torch.Tensor
    inputs: tuple
    description: str

    def f(self, z: torch.Tensor) -> torch.Tensor:
        """The closed map z -> step(z, *inputs) on the whole batch."""
        return self.step(z, *self.inputs)

    def relative_residual(self, z: torch.Tensor) -> torch.Tensor:
        """‖f(z) − z‖ / ‖f(z)‖ per sample [B], evaluated here for every library alike."""
        with torch.no_grad():
            fz = self.f(z)
            return torch.linalg.vector_norm(fz - z, dim=1) / torch.linalg.vector_norm(fz, dim=1).clamp_min(1e-30)


PROBLEMS: dict[str, Callable[[bool], Problem]] = {}


def problem(name: str) -> Callable:
    """Register a builder ``(quick: bool) -> Problem`` under ``name``."""

    def register(builder: Callable[[bool], Problem]) -> Callable[[bool], Problem]:
        if name in PROBLEMS:
            raise ValueError(f"problem {name!r} is registered twice")
        PROBLEMS[name] = builder
        return builder

    return register


def build(names: list[str] | None = None, quick: bool = False) -> list[Problem]:
    """The problems ``names`` (all when None), built."""
    unknown = sorted(set(names or []) - set(PROBLEMS))
    if unknown:
        raise SystemExit(f"unknown problem(s) {', '.join(unknown)}; known: {', '.join(PROBLEMS)}")
    return [PROBLEMS[n](quick) for n in (names or list(PROBLEMS))]


# ------------------------------------------------------------------------------------------- tanh DEQ


def _tanh(kind: str, norm: float) -> Callable[[bool], Problem]:
    def builder(quick: bool) -> Problem:
        batch, width = (8, 32) if quick else (64, 256)
        gen = torch.Generator().manual_seed(0)
        raw = torch.randn(width, width, generator=gen, dtype=torch.float64)
        if kind == "orthogonal":
            raw, _ = torch.linalg.qr(raw)
        W = (raw * (norm / torch.linalg.matrix_norm(raw, 2))).float()
        U = (torch.randn(width, width, generator=gen, dtype=torch.float64) / width**0.5).float()
        x = torch.randn(batch, width, generator=gen, dtype=torch.float64).float()

        def step(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
            return torch.tanh(z @ W.T + x @ U.T)

        return Problem(f"tanh_{kind}_{norm}", step, torch.zeros(batch, width), (x,),
                       f"tanh(Wz + Ux), W {kind} with ‖W‖₂ = {norm}, B×D = {batch}×{width}, z0 = 0")

    return builder


for _kind in ("gaussian", "orthogonal"):
    for _norm in (0.9, 0.99, 0.999):
        problem(f"tanh_{_kind}_{_norm}")(_tanh(_kind, _norm))


# ---------------------------------------------------------------------------- slot attention and SLATE


def _flat(step_module: torch.nn.Module, shape: tuple[int, ...]) -> Callable[..., torch.Tensor]:
    """``step_module`` on states ``[B, *shape]`` as a step on flat states ``[B, prod(shape)]`` (frozen weights)."""

    def step(z: torch.Tensor, *inputs: torch.Tensor) -> torch.Tensor:
        return step_module(z.reshape(z.shape[0], *shape), *inputs).reshape(z.shape[0], -1)

    for p in step_module.parameters():
        p.requires_grad_(False)
    return step


def _test_images(data_config, quick: bool) -> torch.Tensor:
    """The first 8 (quick) or 32 procedural test scenes, ``[B, 3, H, W]``."""
    from deqkit.data import SceneDataset

    data = SceneDataset(data_config, "test")
    return torch.stack([data[i]["image"] for i in range(8 if quick else 32)])


def _slot_update(name: str, sa: torch.nn.Module, features: torch.Tensor, what: str) -> Problem:
    """The slot update of ``sa`` (a ``deqkit.nn.SlotAttention``) over ``features`` [B, N, C]: z = slots
    [B, K·S], inputs = keys, values, z0 = the module's initial slots."""
    with torch.no_grad():
        features = sa.norm_inputs(features)
        k, v = sa.to_k(features), sa.to_v(features)
        z0 = sa.initial_slots(k.shape[0]).reshape(k.shape[0], -1).clone()
    return Problem(name, _flat(sa.step, (sa.num_slots, sa.slot_dim)), z0, (k, v),
                   f"{what}, {k.shape[0]} test scenes, K×S = {sa.num_slots}×{sa.slot_dim}, N = {k.shape[1]} inputs")


def _slot_attention(trained: bool, quick: bool) -> Problem:
    """The slot update of the slot attention cpu preset's model on test scenes."""
    from applications.slot_attention.app import APP, PRESETS  # benchmarks are clients: they may import apps
    from deqkit.train.config import resolve_config
    from deqkit.train.restore import restore

    if trained:
        model, config = (r := restore(TRAINED_SLOT_ATTENTION)).model, r.config
    else:
        config = resolve_config(APP.config_type, overrides=PRESETS["cpu"])
        torch.manual_seed(0)
        model = APP.build_model(config).eval()
    images = _test_images(config.data, quick)
    with torch.no_grad():
        features = model.encoder(images)
    state = "trained 2000 steps (benchmarks/data)" if trained else "at initialisation (seed 0)"
    return _slot_update(f"slot_attention_{'trained' if trained else 'init'}", model.slot_attention, features,
                        f"slot update of the cpu preset model {state}, z0 = learned queries")


problem("slot_attention_init")(lambda quick: _slot_attention(False, quick))
problem("slot_attention_trained")(lambda quick: _slot_attention(True, quick))


@problem("slate_slot_attention_init")
def slate_slot_attention_init(quick: bool) -> Problem:
    """SLATE's slot update (cpu_gpt preset model at initialisation, seed 0) over the dVAE tokens of test scenes."""
    from applications.slate.app import APP, PRESETS
    from deqkit.train.config import resolve_config

    config = resolve_config(APP.config_type, overrides=PRESETS["cpu_gpt"])
    torch.manual_seed(0)
    model = APP.build_model(config).eval()
    images = _test_images(config.data, quick)
    with torch.no_grad():
        tokens = model.dvae(images, model.tau())["tokens"].flatten(1)
        features = model.slot_features(tokens)
    return _slot_update("slate_slot_attention_init", model.slot_attention, features,
                        "SLATE cpu_gpt preset slot update at initialisation (seed 0) over dVAE tokens, z0 = Gaussian slots")


# ---------------------------------------------------------------------------------------- DSPN inner loop


@problem("dspn_sets_8x8_init")
def dspn_sets_8x8_init(quick: bool) -> Problem:
    """DSPN's inner gradient descent on ½‖enc(Y) − z‖² (set_prediction cpu_sets_8x8 model at init, seed 0).

    Each evaluation of the step differentiates the set encoder (``torch.autograd.grad``), so this checks that
    every solver handles a step that runs autograd itself.
    """
    from applications.set_prediction.app import APP, PRESETS
    from deqkit.train.config import resolve_config

    config = resolve_config(APP.config_type, overrides=PRESETS["cpu_sets_8x8"])
    torch.manual_seed(0)
    model = APP.build_model(config).eval()
    batch = 8 if quick else 64
    dspn = model.dspn
    gen = torch.Generator().manual_seed(3)
    x = torch.randn(batch, dspn.set_size, dspn.element_dim, generator=gen)
    with torch.no_grad():
        z = model.encoder(x)
        y0 = dspn.start(batch, z).contiguous()
    shape = (dspn.set_size, dspn.element_dim)
    if dspn.step.momentum:
        raise SystemExit("dspn_sets_8x8_init expects a plain gradient step (inner_momentum=0)")
    return Problem("dspn_sets_8x8_init", _flat(dspn.step, shape), y0.reshape(batch, -1).clone(), (z, y0),
                   f"DSPN inner descent (lr {dspn.step.lr}), set encoder at initialisation, {batch} random "
                   f"sets of {shape[0]}×{shape[1]}, z = enc(X), Y0 = the learned start")


# ------------------------------------------------------------------------------------------ Sinkhorn


@problem("sinkhorn_log")
def sinkhorn_log(quick: bool) -> Problem:
    """Log-domain Sinkhorn for entropic optimal transport between two uniform point clouds, ε = 0.01.

    State: the dual potential u [B, n]. One step is the two half-updates
    v = ε log b − ε LSE_i((u_i − C_ij)/ε), u' = ε log a − ε LSE_j((v_j − C_ij)/ε), with u' centred (the
    potentials are defined up to a constant; centring makes the fixed point isolated). Small ε makes the
    contraction factor close to 1.
    """
    batch, n, eps = (4, 16, 0.01) if quick else (16, 64, 0.01)
    gen = torch.Generator().manual_seed(1)
    x = torch.rand(batch, n, 2, generator=gen)
    y = torch.rand(batch, n, 2, generator=gen) * 0.8 + 0.1
    cost = torch.cdist(x, y).pow(2)  # [B, n, n], in [0, 2]
    log_w = torch.full((batch, n), -torch.log(torch.tensor(float(n))).item())

    def step(u: torch.Tensor, cost: torch.Tensor, log_w: torch.Tensor) -> torch.Tensor:
        v = eps * log_w - eps * torch.logsumexp((u[:, :, None] - cost) / eps, dim=1)
        u = eps * log_w - eps * torch.logsumexp((v[:, None, :] - cost) / eps, dim=2)
        return u - u.mean(1, keepdim=True)

    return Problem("sinkhorn_log", step, torch.zeros(batch, n), (cost, log_w),
                   f"log-domain Sinkhorn potential, ε = {eps}, {n}×{n} squared-distance costs, B = {batch}, u0 = 0")


# ---------------------------------------------------------------------------------------- soft k-means


@problem("soft_kmeans")
def soft_kmeans(quick: bool) -> Problem:
    """Soft k-means (EM for a mixture of isotropic Gaussians with fixed variance) as a fixed point of centroids.

    State: K centroids of dimension d, flattened [B, K·d]. Step: responsibilities softmax_k(−‖x − μ_k‖² / T),
    then μ_k = Σ r_nk x_n / Σ r_nk. Overlapping clusters and a small temperature make it slow.
    """
    batch, points, k, dim, temp = (4, 64, 4, 2, 0.05) if quick else (32, 256, 8, 2, 0.05)
    gen = torch.Generator().manual_seed(2)
    centres = torch.randn(batch, k, dim, generator=gen)
    labels = torch.randint(0, k, (batch, points), generator=gen)
    x = centres.gather(1, labels[:, :, None].expand(-1, -1, dim)) + 0.6 * torch.randn(batch, points, dim, generator=gen)
    z0 = x[:, :k].reshape(batch, -1).clone()  # the first k points, as a plain k-means start would pick

    def step(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        mu = z.reshape(z.shape[0], k, dim)
        resp = (-torch.cdist(x, mu).pow(2) / temp).softmax(dim=2)  # [B, N, K]
        mu = torch.einsum("bnk,bnd->bkd", resp, x) / (resp.sum(1)[:, :, None] + 1e-9)
        return mu.reshape(z.shape[0], -1)

    return Problem("soft_kmeans", step, z0, (x,),
                   f"soft k-means centroids, K = {k}, {points} points in {dim}-d, T = {temp}, B = {batch}, "
                   "z0 = first K points")
