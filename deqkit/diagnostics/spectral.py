"""Spectral diagnostics of a fixed-point step: ‖∂f/∂z‖₂, the spectral radius ρ(∂f/∂z) and ‖∂f/∂z‖_F².

A fixed-point iteration z ← f(z) is locally contractive when the spectral radius ρ(J) of J = ∂f/∂z at z* is
below 1, and every iteration contracts when ‖J‖₂ < 1; both creeping towards 1 during training is how an
unstable iterative refinement model shows itself. All estimates here are matrix-free: they use
Jacobian-vector products (``torch.func.jvp``) and vector-Jacobian products (``torch.func.vjp``) on the flat
``[B, D]`` view of the state, never a dense Jacobian.

Samples are assumed independent (sample b of f(z) depends on sample b of z only), so J is block diagonal
over the batch and one batched product gives every sample's product at once. A step that mixes samples
(batch norm in training mode, attention across the batch) breaks that assumption.

The functions call ``f`` but never change a model: they do not switch train/eval mode, and they return
results without an autograd graph (``jacobian_frobenius`` excepted, which is differentiable while grad is
enabled so that it can serve as a training regulariser).
"""

from __future__ import annotations

from typing import Callable, Literal

import numpy as np
import torch
from torch.func import jvp, vjp

from deqkit.errors import ConfigError, unknown_choice
from deqkit.pytree import State, flat_map, spec_of, tree_map

NormMethod = Literal["lanczos", "power"]
RadiusMethod = Literal["arnoldi", "arpack"]
NORM_METHODS = ("lanczos", "power")
RADIUS_METHODS = ("arnoldi", "arpack")

# Consecutive steps an estimate must stay within ``tol`` before a sample counts as settled. A Krylov
# estimate can plateau at the second singular value / eigenvalue for a few steps before the first one
# appears (when the random start barely touches its direction). On the Gaussian and non-normal test
# Jacobians of benchmarks/diagnostics.py (D = 32-256), 5 steps leave ~0.3% of samples more than 1% low for
# the norm (3 steps: ~1%) for ~15% more products; for the radius ~0.6% of samples end more than 5% low
# either way (a wrong plateau there lasts longer than any affordable patience).
_PATIENCE = 5


class _Linearised:
    """J = ∂f/∂z at z on the flat ``[B, D]`` view: ``mv(v) = J v`` and ``rmv(u) = Jᵀ u`` per sample.

    ``Jᵀ u`` reuses one ``vjp`` linearisation. ``J v`` uses forward mode (``jvp``); if ``f`` has an op
    without a forward-mode formula it falls back to differentiating the (linear) VJP map, which gives the
    same product from the stored linearisation.
    """

    def __init__(self, f: Callable[[State], State], z: State):
        self.spec = spec_of(z)
        if self.spec.dtype.is_complex:
            raise TypeError("the diagnostics need a real floating-point state, got a complex one")
        self.f = flat_map(f, self.spec)
        self.z = self.spec.flatten(z)
        self._vjp_fn: Callable | None = None
        self._use_jvp = True

    @property
    def batch(self) -> int:
        return self.z.shape[0]

    @property
    def dim(self) -> int:
        return self.z.shape[1]

    def rmv(self, u: torch.Tensor) -> torch.Tensor:
        """Jᵀ u for u [B, D]."""
        return self._linearisation()(u)[0]

    def _linearisation(self) -> Callable:
        if self._vjp_fn is None:  # built outside any transform, so the fallback below can differentiate it
            _, self._vjp_fn = vjp(self.f, self.z)
        return self._vjp_fn

    def mv(self, v: torch.Tensor) -> torch.Tensor:
        """J v for v [B, D]."""
        if self._use_jvp:
            try:
                return jvp(self.f, (self.z,), (v,))[1]
            except (NotImplementedError, RuntimeError):
                self._use_jvp = False  # e.g. an op without a forward-mode derivative
        # The VJP map u ↦ Jᵀu is linear; its own VJP with cotangent v is (Jᵀ)ᵀ v = J v.
        vjp_fn = self._linearisation()
        _, transpose = vjp(lambda u: vjp_fn(u)[0], torch.zeros_like(self.z))
        return transpose(v)[0]

    def random(self, generator: torch.Generator | None) -> torch.Tensor:
        """A Gaussian [B, D] block with unit rows, on the state's device and flat dtype."""
        v = torch.randn(self.z.shape, generator=generator, dtype=self.z.dtype, device=self.z.device)
        return v / torch.linalg.vector_norm(v, dim=1, keepdim=True)


def _orthogonalise(w: torch.Tensor, basis: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Remove from w [B, D] its components along the orthonormal rows of basis [B, k, D].

    Classical Gram-Schmidt applied twice ("twice is enough") keeps the basis orthonormal to rounding
    error; returns the new w and the coefficients [B, k] that were removed.
    """
    coeffs = torch.zeros(basis.shape[:2], dtype=w.dtype, device=w.device)
    for _ in range(2):
        h = torch.einsum("bkd,bd->bk", basis, w)
        w = w - torch.einsum("bkd,bk->bd", basis, h)
        coeffs = coeffs + h
    return w, coeffs


def _normalise(w: torch.Tensor, scale: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split w [B, D] into its norm [B] and direction; a norm below rounding of ``scale`` [B] is a breakdown.

    Returns (norm, direction, broke): a broken-down sample gets norm 0 and a zero direction, which keeps
    the Krylov recurrences exact (the subspace found so far is invariant).
    """
    norm = torch.linalg.vector_norm(w, dim=1)
    eps = torch.finfo(w.dtype).eps
    broke = norm <= 10 * eps * scale.clamp_min(torch.finfo(w.dtype).tiny)
    norm = torch.where(broke, torch.zeros_like(norm), norm)
    direction = torch.where(broke[:, None], torch.zeros_like(w), w / norm.clamp_min(torch.finfo(w.dtype).tiny)[:, None])
    return norm, direction, broke


class _Settling:
    """Per-sample stopping: a sample is done once its estimate moved by < tol (relative) ``_PATIENCE`` times
    in a row, or its Krylov subspace became invariant (the estimate is then exact)."""

    def __init__(self, batch: int, tol: float, device: torch.device):
        self.tol = tol
        self.estimate = torch.zeros(batch, dtype=torch.float64, device=device)
        self.streak = torch.zeros(batch, dtype=torch.long, device=device)
        self.done = torch.zeros(batch, dtype=torch.bool, device=device)

    def update(self, new: torch.Tensor, exact: torch.Tensor | None = None) -> bool:
        """Record new estimates [B] for samples not yet done; returns True when every sample is done."""
        small = (new - self.estimate).abs() <= self.tol * new.abs()
        self.streak = torch.where(small, self.streak + 1, torch.zeros_like(self.streak))
        self.estimate = torch.where(self.done, self.estimate, new)
        self.done = self.done | (self.streak >= _PATIENCE)
        if exact is not None:
            self.done = self.done | exact
        return bool(self.done.all())


def _check_common(tol: float, generator: torch.Generator | None, where: str) -> None:
    if not (tol > 0):
        raise ConfigError(f"{where}: tol must be > 0, got {tol!r}")
    if generator is not None and not isinstance(generator, torch.Generator):
        raise ConfigError(f"{where}: generator must be a torch.Generator or None, got {type(generator).__name__}")


def spectral_norm(
    f: Callable[[State], State],
    z: State,
    *,
    iters: int = 50,
    tol: float = 1e-3,
    method: NormMethod = "lanczos",
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """‖∂f/∂z‖₂ at ``z`` for every sample: a [B] tensor in the state's (promoted) dtype, without a graph.

    Power iteration on JᵀJ, one JVP and one VJP per step. ``method="lanczos"`` (default) keeps every
    iterate and reads the estimate off the Golub-Kahan bidiagonalisation of the Krylov subspace, which
    needs far fewer steps than ``method="power"`` (plain power iteration, estimate ‖JᵀJv‖/‖Jv‖) for the
    same accuracy. Both estimates are lower bounds that rise to the truth. A sample stops once its
    estimate changed by less than ``tol`` (relative) over five consecutive steps; at most ``iters``
    steps. ``generator`` (on the state's device) fixes the random start vector.
    """
    _check_common(tol, generator, "spectral_norm")
    if not (isinstance(iters, int) and iters >= 1):
        raise ConfigError(f"spectral_norm: iters must be an integer >= 1, got {iters!r}")
    if method not in NORM_METHODS:
        raise unknown_choice("spectral_norm method", method, NORM_METHODS)
    with torch.no_grad():
        op = _Linearised(f, _detach(z))
        run = _norm_lanczos if method == "lanczos" else _norm_power
        return run(op, iters, tol, generator).to(op.z.dtype)


def _norm_power(op: _Linearised, iters: int, tol: float, generator: torch.Generator | None) -> torch.Tensor:
    v = op.random(generator)
    settle = _Settling(op.batch, tol, op.z.device)
    for _ in range(iters):
        u = op.mv(v)
        w = op.rmv(u)
        u_norm = torch.linalg.vector_norm(u, dim=1)
        w_norm = torch.linalg.vector_norm(w, dim=1)
        zero = w_norm == 0  # J v = 0 or Jᵀ J v = 0: either J = 0 or a null start; both give 0
        estimate = torch.where(zero, torch.zeros_like(w_norm), w_norm / u_norm.clamp_min(torch.finfo(u.dtype).tiny))
        if settle.update(estimate.double(), exact=zero):
            break
        v = torch.where(zero[:, None], v, w / w_norm.clamp_min(torch.finfo(w.dtype).tiny)[:, None])
    return settle.estimate


def _norm_lanczos(op: _Linearised, iters: int, tol: float, generator: torch.Generator | None) -> torch.Tensor:
    """Golub-Kahan-Lanczos with full reorthogonalisation: Jᵀ U_k = V_{k+1} C_k, C_k [(k+1), k]; the top
    singular value of C_k is the best estimate of σ₁ from the Krylov subspace of JᵀJ (a lower bound)."""
    batch, dim = op.batch, op.dim
    steps = min(iters, dim)
    dtype, device = op.z.dtype, op.z.device
    V = torch.zeros(batch, steps + 1, dim, dtype=dtype, device=device)
    U = torch.zeros(batch, steps, dim, dtype=dtype, device=device)
    C = torch.zeros(batch, steps + 1, steps, dtype=torch.float64, device=device)
    V[:, 0] = op.random(generator)
    settle = _Settling(batch, tol, device)
    for j in range(steps):
        p = op.mv(V[:, j])
        scale = torch.linalg.vector_norm(p, dim=1)
        p, _ = _orthogonalise(p, U[:, :j])
        _, U[:, j], broke_u = _normalise(p, scale)
        q = op.rmv(U[:, j])
        scale = torch.linalg.vector_norm(q, dim=1)
        q, coeffs = _orthogonalise(q, V[:, : j + 1])
        beta, V[:, j + 1], broke_v = _normalise(q, scale)
        C[:, : j + 1, j] = coeffs.double()
        C[:, j + 1, j] = beta.double()
        estimate = torch.linalg.svdvals(C[:, : j + 2, : j + 1])[:, 0]
        if settle.update(estimate, exact=broke_u | broke_v):
            break
    return settle.estimate


def spectral_radius(
    f: Callable[[State], State],
    z: State,
    *,
    method: RadiusMethod = "arnoldi",
    krylov_dim: int = 60,
    restarts: int = 5,
    tol: float = 1e-3,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Largest |eigenvalue| of ∂f/∂z at ``z`` for every sample: a [B] tensor without a graph.

    ``method="arnoldi"`` (default): batched Arnoldi with JVPs. The Krylov subspace grows one vector per
    step up to ``krylov_dim``; the eigenvalues of the small Hessenberg matrix (Ritz values) are computed
    after every step, complex ones included, so a dominant complex-conjugate pair (where power iteration
    oscillates forever) is found like any other eigenvalue. A sample stops once its largest |Ritz value|
    changed by less than ``tol`` (relative) over five consecutive steps; a sample that has not settled
    by ``krylov_dim`` steps restarts from the real span of its top Ritz vector, at most ``restarts``
    times. The products cost at most ``krylov_dim · (restarts + 1)`` JVPs for the whole batch.

    ``method="arpack"``: ``scipy.sparse.linalg.eigs`` per sample in float64 (near machine precision, but
    every product is a full-batch JVP, so it costs about B times more: for checking, not for training).
    """
    _check_common(tol, generator, "spectral_radius")
    if method not in RADIUS_METHODS:
        raise unknown_choice("spectral_radius method", method, RADIUS_METHODS)
    if not (isinstance(krylov_dim, int) and krylov_dim >= 1):
        raise ConfigError(f"spectral_radius: krylov_dim must be an integer >= 1, got {krylov_dim!r}")
    if not (isinstance(restarts, int) and restarts >= 0):
        raise ConfigError(f"spectral_radius: restarts must be an integer >= 0, got {restarts!r}")
    with torch.no_grad():
        op = _Linearised(f, _detach(z))
        if method == "arpack":
            radius = _radius_arpack(op, generator)
        else:
            radius = _radius_arnoldi(op, krylov_dim, restarts, tol, generator)
        return radius.to(op.z.dtype)


def _radius_arnoldi(
    op: _Linearised, krylov_dim: int, restarts: int, tol: float, generator: torch.Generator | None
) -> torch.Tensor:
    batch, dim = op.batch, op.dim
    m = min(krylov_dim, dim)
    dtype, device = op.z.dtype, op.z.device
    rows = torch.arange(batch, device=device)
    settle = _Settling(batch, tol, device)
    start = op.random(generator)
    for _ in range(restarts + 1):
        V = torch.zeros(batch, m + 1, dim, dtype=dtype, device=device)
        H = torch.zeros(batch, m + 1, m, dtype=torch.float64, device=device)
        V[:, 0] = start
        for j in range(m):
            w = op.mv(V[:, j])
            scale = torch.linalg.vector_norm(w, dim=1)
            w, coeffs = _orthogonalise(w, V[:, : j + 1])
            beta, V[:, j + 1], broke = _normalise(w, scale)
            H[:, : j + 1, j] = coeffs.double()
            H[:, j + 1, j] = beta.double()
            ritz, vectors = torch.linalg.eig(H[:, : j + 1, : j + 1])
            top = ritz.abs().max(dim=1)
            if settle.update(top.values, exact=broke):
                return settle.estimate
        # Restart from the top Ritz vector x = V y. A complex y has an arbitrary phase; rotating its largest
        # entry to the real axis makes Re x + Im x a nonzero vector of the (real) invariant subspace of
        # the eigenvalue or of its conjugate pair.
        y = vectors[rows, :, top.indices]
        anchor = y[rows, y.abs().argmax(dim=1)]
        y = y * (anchor.conj() / anchor.abs().clamp_min(torch.finfo(torch.float64).tiny))[:, None]
        x = torch.einsum("bkd,bk->bd", V[:, :m].to(y.dtype), y.to(V.device))
        x = (x.real + x.imag).to(dtype)
        norm = torch.linalg.vector_norm(x, dim=1, keepdim=True)
        start = torch.where(norm > 0, x / norm.clamp_min(torch.finfo(dtype).tiny), start)
    return settle.estimate


def _radius_arpack(op: _Linearised, generator: torch.Generator | None) -> torch.Tensor:
    """Per sample: ARPACK (implicitly restarted Arnoldi) on a float64 LinearOperator of that sample's block."""
    from scipy.sparse.linalg import ArpackNoConvergence, LinearOperator, eigs

    batch, dim = op.batch, op.dim
    starts = op.random(generator).double().cpu().numpy()
    radius = np.empty(batch)
    for b in range(batch):

        def matvec(x: np.ndarray, b: int = b) -> np.ndarray:
            v = torch.zeros_like(op.z)
            v[b] = torch.as_tensor(np.ravel(x), dtype=op.z.dtype, device=op.z.device)
            return op.mv(v)[b].double().cpu().numpy()

        if dim < 4:  # ARPACK needs k < n - 1: build the tiny block densely instead
            block = np.stack([matvec(e) for e in np.eye(dim)], axis=1)
            radius[b] = np.abs(np.linalg.eigvals(block)).max()
            continue
        operator = LinearOperator((dim, dim), matvec=matvec, dtype=np.float64)
        try:
            values = eigs(operator, k=min(3, dim - 2), which="LM", v0=starts[b], return_eigenvectors=False)
        except ArpackNoConvergence as err:
            values = err.eigenvalues
        radius[b] = np.abs(values).max() if len(values) else np.nan
    return torch.as_tensor(radius, device=op.z.device)


def jacobian_frobenius(
    f: Callable[[State], State],
    z: State,
    *,
    samples: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Hutchinson estimate of ‖∂f/∂z‖_F² at ``z`` for every sample: a [B] tensor.

    ‖J‖_F² = tr(JJᵀ) = E‖εᵀJ‖² for ε ~ N(0, I): the mean of ``samples`` VJPs from one linearisation
    (Bai et al. 2021, "Stabilizing Equilibrium Models by Jacobian Regularization"; torchdeq's ``jac_reg``
    returns the batch mean divided by the state size instead). The estimate is unbiased and, while grad is
    enabled, differentiable with respect to ``z`` and to whatever ``f`` closes over, so its mean can be
    added to a loss; under ``torch.no_grad()`` it builds no graph.
    """
    if not (isinstance(samples, int) and samples >= 1):
        raise ConfigError(f"jacobian_frobenius: samples must be an integer >= 1, got {samples!r}")
    _check_common(1.0, generator, "jacobian_frobenius")
    op = _Linearised(f, z)
    total = torch.zeros(op.batch, dtype=op.z.dtype, device=op.z.device)
    for _ in range(samples):
        eps = torch.randn(op.z.shape, generator=generator, dtype=op.z.dtype, device=op.z.device)
        total = total + op.rmv(eps).pow(2).sum(dim=1)
    return total / samples


def _detach(z: State) -> State:
    return tree_map(lambda t: t.detach() if isinstance(t, torch.Tensor) else t, z)
