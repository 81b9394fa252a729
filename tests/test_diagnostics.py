"""Diagnostics against dense oracles: jacrev + svdvals/eigvals in float64, numpy for residual statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from torch import nn

import deqkit
from deqkit.diagnostics import (
    active_length,
    convergence_rate,
    fraction_converged,
    jacobian_frobenius,
    nfe_histogram,
    residual_curves,
    spectral_norm,
    spectral_radius,
    summarize,
)
from deqkit.errors import ConfigError
from deqkit.pytree import flat_map, spec_of

torch.set_num_threads(1)
F64 = torch.float64


# ----------------------------------------------------------------------------------------------- problems
def gaussian_w(gen: torch.Generator, batch: int, dim: int) -> torch.Tensor:
    return torch.randn(batch, dim, dim, generator=gen, dtype=F64) / math.sqrt(dim)


def qdt_w(gen: torch.Generator, batch: int, dim: int, strength: float = 3.0) -> torch.Tensor:
    """Orthogonal Q · diag · (I + strong strictly upper triangular): far from normal."""
    q, _ = torch.linalg.qr(torch.randn(batch, dim, dim, generator=gen, dtype=F64))
    d = 0.5 + torch.rand(batch, dim, generator=gen, dtype=F64)
    upper = torch.triu(torch.randn(batch, dim, dim, generator=gen, dtype=F64), 1) * strength / math.sqrt(dim)
    w = q @ (d[:, :, None] * (torch.eye(dim, dtype=F64) + upper))
    return w / torch.linalg.matrix_norm(w, ord=2)[:, None, None]


def pair_w(gen: torch.Generator, batch: int, dim: int) -> torch.Tensor:
    """Q (T) Qᵀ with T upper triangular and a dominant complex-conjugate pair r·e^{±iθ} (a 2x2 rotation block)."""
    q, _ = torch.linalg.qr(torch.randn(batch, dim, dim, generator=gen, dtype=F64))
    lam = torch.rand(batch, dim, generator=gen, dtype=F64) * 1.4 - 0.7
    t = torch.diag_embed(lam) + torch.triu(torch.randn(batch, dim, dim, generator=gen, dtype=F64), 1) / math.sqrt(dim)
    r = 1.0 + 0.2 * torch.rand(batch, generator=gen, dtype=F64)
    th = 0.3 + 2.5 * torch.rand(batch, generator=gen, dtype=F64)
    t[:, 0, 0] = t[:, 1, 1] = r * torch.cos(th)
    t[:, 0, 1], t[:, 1, 0] = r * torch.sin(th), -r * torch.sin(th)
    return q @ t @ q.transpose(1, 2)


def tanh_step(w: torch.Tensor, gen: torch.Generator, pre_scale: float = 0.5):
    """f(z) = tanh(W z + U x) per sample, a state z near 0, and the dense per-sample Jacobian [B, D, D]."""
    batch, dim, _ = w.shape
    u = torch.randn(batch, dim, dim, generator=gen, dtype=F64) / math.sqrt(dim)
    x = torch.randn(batch, dim, generator=gen, dtype=F64) * pre_scale
    z = torch.randn(batch, dim, generator=gen, dtype=F64) * 0.1

    def one(z, w, u, x):  # a single sample: z [D]
        return torch.tanh(w @ z + u @ x)

    def f(z: torch.Tensor) -> torch.Tensor:
        return torch.vmap(one)(z, w, u, x)

    return f, z, torch.vmap(torch.func.jacrev(one))(z, w, u, x)


def dense_jacobian(f, z) -> torch.Tensor:
    """Per-sample blocks [B, D, D] of the Jacobian of the flat map, from jacrev on the whole batch."""
    spec = spec_of(z)
    flat = spec.flatten(z).detach()
    full = torch.func.jacrev(flat_map(f, spec))(flat)  # [B, D, B, D]
    idx = torch.arange(flat.shape[0])
    return full[idx, :, idx, :]


def rel_err(est: torch.Tensor, true: torch.Tensor) -> torch.Tensor:
    return (est.double() - true).abs() / true


# ------------------------------------------------------------------------------------------ spectral norm
@pytest.mark.parametrize("family", [gaussian_w, qdt_w, pair_w])
def test_spectral_norm_matches_dense_svd_within_1_percent(family):
    gen = torch.Generator().manual_seed(0)
    f, z, jac = tanh_step(family(gen, 24, 40), gen)
    est = spectral_norm(f, z, generator=gen)
    assert est.shape == (24,) and est.dtype == F64
    assert rel_err(est, torch.linalg.svdvals(jac)[:, 0]).max() < 0.01


def test_spectral_norm_power_method_converges_to_dense_svd():
    gen = torch.Generator().manual_seed(1)
    f, z, jac = tanh_step(gaussian_w(gen, 8, 12), gen)
    est = spectral_norm(f, z, method="power", iters=2000, tol=1e-9, generator=gen)
    assert rel_err(est, torch.linalg.svdvals(jac)[:, 0]).max() < 0.01


def test_spectral_norm_of_a_linear_map_is_exact_once_the_krylov_space_is_full():
    gen = torch.Generator().manual_seed(2)
    w = qdt_w(gen, 5, 9)
    est = spectral_norm(lambda z: torch.einsum("bij,bj->bi", w, z), torch.zeros(5, 9, dtype=F64), generator=gen, tol=1e-12)
    torch.testing.assert_close(est, torch.linalg.svdvals(w)[:, 0], rtol=1e-10, atol=0)


# ---------------------------------------------------------------------------------------- spectral radius
@pytest.mark.parametrize("family", [gaussian_w, qdt_w, pair_w])
def test_spectral_radius_matches_dense_eigvals(family):
    gen = torch.Generator().manual_seed(3)
    f, z, jac = tanh_step(family(gen, 16, 32), gen)
    est = spectral_radius(f, z, generator=gen)
    assert est.shape == (16,) and est.dtype == F64
    assert rel_err(est, torch.linalg.eigvals(jac).abs().amax(dim=1)).max() < 0.01


def test_spectral_radius_within_5_percent_for_95_percent_of_non_normal_problems_where_power_iteration_fails():
    gen = torch.Generator().manual_seed(4)
    batch, dim = 100, 96  # dim > krylov_dim (60), so the Krylov subspace never covers the whole space
    w = torch.cat([pair_w(gen, batch // 2, dim), qdt_w(gen, batch - batch // 2, dim)])
    f, z, jac = tanh_step(w, gen)
    truth = torch.linalg.eigvals(jac).abs().amax(dim=1)
    ours = rel_err(spectral_radius(f, z, generator=gen), truth)
    assert (ours < 0.05).double().mean() >= 0.95
    # The same problems defeat a Rayleigh-quotient power iteration (torchdeq's estimator).
    torchdeq_loss = pytest.importorskip("torchdeq.loss")
    z_req = z.clone().requires_grad_(True)
    _, theirs = torchdeq_loss.power_method(f(z_req), z_req, n_iters=100)
    assert (rel_err(theirs.detach(), truth) < 0.05).double().mean() < 0.5


def test_spectral_radius_finds_a_dominant_complex_pair_of_a_linear_map():
    # Eigenvalues 0.9·e^{±0.8i} dominate 0.5, 0.3 and -0.2: power iteration's Rayleigh quotient oscillates.
    c, s = 0.9 * math.cos(0.8), 0.9 * math.sin(0.8)
    t = torch.tensor([[c, s, 1, 2, 0], [-s, c, 0, 1, 3], [0, 0, 0.5, 4, 1], [0, 0, 0, 0.3, 2], [0, 0, 0, 0, -0.2]], dtype=F64)
    q, _ = torch.linalg.qr(torch.randn(5, 5, generator=torch.Generator().manual_seed(5), dtype=F64))
    w = (q @ t @ q.T).expand(3, 5, 5)
    est = spectral_radius(lambda z: torch.einsum("bij,bj->bi", w, z), torch.zeros(3, 5, dtype=F64))
    torch.testing.assert_close(est, torch.full((3,), 0.9, dtype=F64), rtol=1e-9, atol=0)


def test_spectral_radius_arpack_agrees_with_dense_to_high_precision():
    gen = torch.Generator().manual_seed(6)
    f, z, jac = tanh_step(pair_w(gen, 3, 20), gen)
    est = spectral_radius(f, z, method="arpack", generator=gen)
    torch.testing.assert_close(est, torch.linalg.eigvals(jac).abs().amax(dim=1), rtol=1e-8, atol=0)
    tiny = torch.tensor([[[0.0, 2.0, 0.0], [-2.0, 0.0, 0.0], [0.0, 0.0, 1.0]]], dtype=F64)  # dense path, n < 4
    est = spectral_radius(lambda z: torch.einsum("bij,bj->bi", tiny, z), torch.zeros(1, 3, dtype=F64), method="arpack")
    torch.testing.assert_close(est, torch.tensor([2.0], dtype=F64))


# ------------------------------------------------------------------------------------ Frobenius (Hutchinson)
def test_jacobian_frobenius_mean_over_many_samples_matches_dense():
    gen = torch.Generator().manual_seed(7)
    f, z, jac = tanh_step(qdt_w(gen, 4, 10), gen)
    est = jacobian_frobenius(f, z, samples=4000, generator=gen)
    assert rel_err(est, jac.pow(2).sum(dim=(1, 2))).max() < 0.05


def test_jacobian_frobenius_gradient_equals_the_dense_gradient_of_the_same_estimate():
    gen = torch.Generator().manual_seed(8)
    w = nn.Parameter(gaussian_w(gen, 1, 6)[0])
    z = torch.randn(3, 6, generator=gen, dtype=F64)

    def step(z):
        return torch.tanh(z @ w.T)

    state = torch.Generator().manual_seed(9).get_state()
    est = jacobian_frobenius(step, z, samples=2, generator=torch.Generator().set_state(state))
    assert est.grad_fn is not None
    (grad,) = torch.autograd.grad(est.sum(), w)
    # Oracle: the same Gaussian probes against dense Jacobians built with a differentiable graph.
    probe_gen = torch.Generator().set_state(state)
    probes = torch.stack([torch.randn(3, 6, generator=probe_gen, dtype=F64) for _ in range(2)])
    jac = torch.stack([torch.autograd.functional.jacobian(step, z[i : i + 1], create_graph=True)[0, :, 0] for i in range(3)])
    oracle = torch.einsum("sbi,bij->sbj", probes, jac).pow(2).sum(dim=2).mean(dim=0)
    torch.testing.assert_close(est, oracle)
    torch.testing.assert_close(grad, torch.autograd.grad(oracle.sum(), w)[0])


# ---------------------------------------------------------------------------------- pytrees and batches
def pytree_step(gen: torch.Generator, batch: int):
    """A coupled step on {'a': [B, 3], 'b': ([B, 2, 2], [B, 2])} (D = 9)."""
    w = gaussian_w(gen, batch, 9) * 1.5

    def f(state):
        flat = torch.cat([state["a"], state["b"][0].flatten(1), state["b"][1]], dim=1)
        out = torch.tanh(torch.einsum("bij,bj->bi", w, flat) + 0.3)
        return {"a": out[:, :3], "b": (out[:, 3:7].reshape(-1, 2, 2), out[:, 7:])}

    z = {"a": torch.randn(batch, 3, dtype=F64, generator=gen),
         "b": (torch.randn(batch, 2, 2, dtype=F64, generator=gen), torch.randn(batch, 2, dtype=F64, generator=gen))}
    return f, z


def test_pytree_states_match_the_dense_jacobian_of_the_flat_view():
    gen = torch.Generator().manual_seed(10)
    f, z = pytree_step(gen, 6)
    jac = dense_jacobian(f, z)
    torch.testing.assert_close(spectral_norm(f, z, tol=1e-10), torch.linalg.svdvals(jac)[:, 0], rtol=1e-8, atol=0)
    torch.testing.assert_close(spectral_radius(f, z, tol=1e-10), torch.linalg.eigvals(jac).abs().amax(1), rtol=1e-8, atol=0)
    est = jacobian_frobenius(f, z, samples=3000, generator=gen)
    assert rel_err(est, jac.pow(2).sum(dim=(1, 2))).max() < 0.08
    pair = (z["a"], z["b"][1])  # a tuple state
    g = lambda s: (torch.sin(s[0] + s[1].sum(1, keepdim=True)), 0.5 * s[1] * s[0][:, :2])
    torch.testing.assert_close(spectral_norm(g, pair, tol=1e-10), torch.linalg.svdvals(dense_jacobian(g, pair))[:, 0])


def test_each_sample_is_estimated_independently_of_the_rest_of_the_batch():
    gen = torch.Generator().manual_seed(11)
    f, z, _ = tanh_step(pair_w(gen, 5, 8), gen)
    perm = torch.tensor([3, 0, 4, 1, 2])
    whole = {fn: fn(f, z, tol=1e-10) for fn in (spectral_norm, spectral_radius)}
    for fn, full in whole.items():
        permuted = fn(lambda s: f(s[torch.argsort(perm)])[perm], z[perm], tol=1e-10)
        torch.testing.assert_close(permuted, full[perm], rtol=1e-9, atol=0)
    # A sample with a zero Jacobian (constant step) gets 0 and leaves the others alone.
    mask = torch.tensor([1.0, 0.0, 1.0, 1.0, 1.0], dtype=F64)[:, None]
    masked = lambda s: f(s) * mask
    assert spectral_norm(masked, z, tol=1e-10)[1] == 0 and spectral_radius(masked, z, tol=1e-10)[1] == 0
    keep = torch.tensor([0, 2, 3, 4])
    torch.testing.assert_close(spectral_radius(masked, z, tol=1e-10)[keep], whole[spectral_radius][keep], rtol=1e-9, atol=0)


# ------------------------------------------------------------------------------- graphs, modules, dtypes
class Step(nn.Module):
    def __init__(self, dim: int):
        super().__init__()
        self.lin = nn.Linear(dim, dim)
        self.drop = nn.Dropout(0.0)

    def forward(self, z, x):
        return torch.tanh(self.drop(self.lin(z)) + x)


@pytest.mark.parametrize("grad", [False, True])
def test_no_graph_and_no_model_change(grad):
    torch.manual_seed(12)
    step = Step(7).train()
    before = {k: v.clone() for k, v in step.state_dict().items()}
    x = torch.randn(4, 7)
    z = torch.randn(4, 7, requires_grad=True)
    with torch.set_grad_enabled(grad):
        results = [spectral_norm(lambda s: step(s, x), z), spectral_radius(lambda s: step(s, x), z)]
        frob = jacobian_frobenius(lambda s: step(s, x), z)
    for r in results:
        assert not r.requires_grad and r.grad_fn is None and r.dtype == torch.float32
    assert frob.requires_grad == grad and (frob.grad_fn is None) == (not grad)
    assert step.training and all(p.grad is None for p in step.parameters()) and z.grad is None
    for k, v in step.state_dict().items():
        assert torch.equal(v, before[k])


def test_float32_results_follow_the_state_dtype_and_device():
    gen = torch.Generator().manual_seed(13)
    f64, z64, jac = tanh_step(qdt_w(gen, 6, 16), gen)
    f32 = lambda z: f64(z.double()).float()  # a float32 state in and out, as a float32 model would give
    z32 = z64.float()
    for fn, truth in ((spectral_norm, torch.linalg.svdvals(jac)[:, 0]), (spectral_radius, torch.linalg.eigvals(jac).abs().amax(1))):
        est = fn(f32, z32)
        assert est.dtype == torch.float32 and est.device == z32.device
        assert rel_err(est, truth).max() < 0.01


def test_forward_mode_fallback_for_an_op_without_a_jvp_rule():
    class Cube(torch.autograd.Function):  # backward only: torch.func.jvp cannot go through it
        @staticmethod
        def forward(x):
            return x**3

        @staticmethod
        def setup_context(ctx, inputs, output):
            ctx.save_for_backward(inputs[0])

        @staticmethod
        def backward(ctx, g):
            (x,) = ctx.saved_tensors
            return 3 * x**2 * g

    gen = torch.Generator().manual_seed(14)
    w = pair_w(gen, 3, 6)
    f = lambda z: Cube.apply(torch.einsum("bij,bj->bi", w, z))
    z = torch.randn(3, 6, dtype=F64, generator=gen) + 1.0
    jac = 3 * torch.einsum("bij,bj->bi", w, z).pow(2)[:, :, None] * w
    torch.testing.assert_close(spectral_radius(f, z, tol=1e-10), torch.linalg.eigvals(jac).abs().amax(1))


def test_invalid_options_are_one_line_errors():
    z = torch.zeros(2, 3)
    with pytest.raises(ConfigError, match="method"):
        spectral_radius(lambda s: s, z, method="power")
    with pytest.raises(ConfigError, match="iters"):
        spectral_norm(lambda s: s, z, iters=0)
    with pytest.raises(ConfigError, match="samples"):
        jacobian_frobenius(lambda s: s, z, samples=0)
    with pytest.raises(ValueError, match="same structure"):
        spectral_norm(lambda s: (s, s), z)


# ------------------------------------------------------------------------------------ residual diagnostics
class Info:
    """Any object with SolveInfo's attributes will do."""

    def __init__(self, trace, converged=None, diverged=None, nfe=None):
        self.trace = trace
        b = trace.shape[1]
        self.residual = trace[-1]
        self.converged = torch.ones(b, dtype=torch.bool) if converged is None else converged
        self.diverged = torch.zeros(b, dtype=torch.bool) if diverged is None else diverged
        self.nfe = active_length(self) if nfe is None else nfe


def geometric_info() -> tuple[Info, torch.Tensor, torch.Tensor]:
    """Sample b falls by the factor rates[b] per iteration for lengths[b] iterations, then repeats itself."""
    rates = torch.tensor([0.5, 0.9, 0.1, 0.99], dtype=F64)
    lengths = torch.tensor([12, 30, 4, 30])
    t = torch.arange(30, dtype=F64)[:, None]
    trace = 2.0 * rates ** torch.minimum(t, (lengths - 1).to(F64))
    return Info(trace, converged=torch.tensor([True, False, True, False])), rates, lengths


def test_convergence_rate_recovers_geometric_decay_over_the_active_part():
    info, rates, lengths = geometric_info()
    assert torch.equal(active_length(info), lengths)
    torch.testing.assert_close(convergence_rate(info), rates.log())


def test_convergence_rate_is_the_least_squares_slope_and_skips_non_finite_points():
    rng = np.random.default_rng(0)
    trace = torch.tensor(np.exp(rng.normal(size=(15, 3)).cumsum(0)))
    trace[10:, 2] = float("inf")  # a diverged sample: its finite part is fitted
    trace[:, 1] = 1.0  # stopped at once: a single point, no slope
    slope = convergence_rate(Info(trace))
    assert slope[1].isnan()
    for b, n in ((0, 15), (2, 10)):
        expected = np.polyfit(np.arange(n), np.log(trace[:n, b].numpy()), 1)[0]
        assert slope[b].item() == pytest.approx(expected, rel=1e-10)


def test_residual_curves_match_numpy_statistics():
    info, _, lengths = geometric_info()
    trace = info.trace.clone()
    trace[20:, 3] = float("nan")
    info = Info(trace)
    curves = residual_curves(info)
    arr = trace.numpy()
    np.testing.assert_allclose(curves["mean"], np.nanmean(arr, axis=1))
    np.testing.assert_allclose(curves["max"], np.nanmax(arr, axis=1))
    np.testing.assert_allclose(curves["min"], np.nanmin(arr, axis=1))
    np.testing.assert_allclose(curves["median"], np.nanmedian(arr, axis=1))
    np.testing.assert_allclose(curves["geomean"], np.exp(np.nanmean(np.log(arr), axis=1)))
    running = (np.arange(30)[:, None] < np.array([12, 30, 4, 21])[None, :]).mean(axis=1)  # the first NaN is a change
    np.testing.assert_allclose(curves["active"], running)


def test_fraction_histogram_and_summary():
    info, rates, _ = geometric_info()
    info.nfe = torch.tensor([12, 50, 4, 50])
    assert fraction_converged(info) == 0.5
    counts, edges = nfe_histogram(info, bins=4)
    np_counts, np_edges = np.histogram(info.nfe.numpy(), bins=4)
    assert counts.tolist() == np_counts.tolist() and np.allclose(edges.numpy(), np_edges)
    counts, _ = nfe_histogram(info, bins=[0, 10, 20, 50])
    assert counts.tolist() == [1, 1, 2]
    summary = summarize(info)
    assert all(type(v) is float for v in summary.values())
    assert summary["fraction_converged"] == 0.5 and summary["nfe_max"] == 50.0 and summary["iterations"] == 30.0
    assert summary["rate_median"] == pytest.approx(float(np.median(rates.log().numpy())))


def test_diagnostics_of_a_real_solve():
    # z ← A z + b with ‖A‖₂ = 0.6 in the abs stop mode: the residual falls by about 0.6 per iteration.
    gen = torch.Generator().manual_seed(15)
    q, _ = torch.linalg.qr(torch.randn(8, 8, generator=gen, dtype=F64))
    a = 0.6 * q
    b = torch.randn(5, 8, generator=gen, dtype=F64)
    z, info = deqkit.fixed_point(lambda z: z @ a.T + b, torch.zeros(5, 8, dtype=F64), solver="iteration",
                                 tol=1e-8, max_iter=100, stop_mode="abs")
    torch.testing.assert_close(convergence_rate(info), torch.full((5,), math.log(0.6), dtype=F64), rtol=1e-6, atol=0)
    assert fraction_converged(info) == 1.0 and summarize(info)["residual_max"] <= 1e-8
    torch.testing.assert_close(spectral_norm(lambda z: z @ a.T + b, z), torch.full((5,), 0.6, dtype=F64))
