"""Set encoders and the DSPN decoder: FSPool's invariance and symmetry breaking, the inner gradient step
against its closed form, the fixed point under every estimator, IFT against the dense oracle, and the
spectral diagnostics on a step that itself differentiates."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from deqkit.backward import IFT, Neumann
from deqkit.diagnostics import spectral_norm
from deqkit.nn import DSPN, DSPNStep, FSPool, SetEncoder, inner_gradient

torch.set_num_threads(1)


def test_set_encoders_are_permutation_invariant():
    torch.manual_seed(0)
    y = torch.randn(3, 5, 4)
    perm = torch.randperm(5)
    for pool in ("fspool", "sum"):
        enc = SetEncoder(4, 5, 8, 6, pool=pool)
        torch.testing.assert_close(enc(y), enc(y[:, perm]))


def test_fspool_separates_equal_elements_and_sum_pooling_cannot():
    """Equal elements get equal inner gradients under sum pooling (they never separate); sorting gives
    each rank its own weight, so under FSPool they differ."""
    torch.manual_seed(0)
    y = torch.randn(1, 1, 4).expand(1, 3, 4).clone()
    z = torch.randn(1, 6)
    for pool, separates in (("fspool", True), ("sum", False)):
        g = inner_gradient(SetEncoder(4, 3, 8, 6, pool=pool), y, z)
        assert (g[0, 0] - g[0, 1]).abs().max().item() > 1e-4 if separates else torch.allclose(g[0, 0], g[0, 1])


class _LinearSum(nn.Module):
    """enc(Y) = W Σ_i y_i: the inner gradient is Wᵀ(W Σ_i y_i − z) / E for every element (plus the
    regulariser's reg · (y_i − y0_i) / (N D))."""

    def __init__(self, d: int, e: int):
        super().__init__()
        self.w = nn.Parameter(torch.randn(e, d))

    def forward(self, y: torch.Tensor) -> torch.Tensor:
        return y.sum(1) @ self.w.T


def test_step_is_gradient_descent_on_the_inner_objective_in_and_out_of_grad_mode():
    torch.manual_seed(0)
    enc, y, z = _LinearSum(3, 4), torch.randn(2, 5, 3), torch.randn(2, 4)
    y0 = torch.randn(2, 5, 3)
    step = DSPNStep(enc, lr=0.1, reg=0.5)
    expected = y - 0.1 * (((y.sum(1) @ enc.w.T - z) @ enc.w)[:, None, :] / 4 + 0.5 * (y - y0) / 15)
    with torch.no_grad():
        out = step(y, z, y0)
    assert not out.requires_grad  # no graph is kept inside no-grad solves
    torch.testing.assert_close(out, expected.detach())
    out = step(y, z, y0)  # with grad: differentiable w.r.t. the encoder's weights (second order)
    torch.testing.assert_close(out, expected)
    (got,) = torch.autograd.grad(out.square().sum(), enc.w)
    (want,) = torch.autograd.grad(expected.square().sum(), enc.w)
    torch.testing.assert_close(got, want)


def test_step_under_no_grad_accepts_a_state_that_requires_grad():
    """A view taken under no_grad of a state that requires grad reports requires_grad but has no graph;
    the step must still differentiate the encoder from a fresh leaf (a solver may hand it such a state)."""
    torch.manual_seed(0)
    enc, z = _LinearSum(3, 4), torch.randn(2, 4)
    flat = torch.randn(2, 15, requires_grad=True)
    step = DSPNStep(enc, lr=0.1)
    with torch.no_grad():
        out = step(flat.reshape(2, 5, 3), z)
        expected = step(flat.detach().reshape(2, 5, 3), z)
    torch.testing.assert_close(out, expected)


def test_unrolled_dspn_is_the_loop_and_every_estimator_trains():
    torch.manual_seed(0)
    enc = SetEncoder(2, 4, 8, 6)
    dspn = DSPN(enc, 4, 2, iters=5, lr=0.3, reg=0.1, backward="unrolled")
    z = torch.randn(3, 6)
    y, info = dspn(z)
    start = loop = dspn.initial_set.expand(3, -1, -1)
    for _ in range(5):
        loop = loop - 0.3 * inner_gradient(enc, loop, z, start, 0.1)
    torch.testing.assert_close(y, loop)
    assert int(info.nfe.max()) == 5
    for backward in ("unrolled", "neumann", "ift", "phantom"):
        dspn.fixed_point.backward = backward
        dspn.zero_grad()
        y, _ = dspn(z)
        y.square().sum().backward()
        assert enc.out.weight.grad.abs().sum() > 0 and dspn.initial_set.grad.abs().sum() > 0, backward


def _converged_dspn(backward, reg=0.0):
    """A tiny DSPN whose inner objective has an isolated minimum (E = 6 >= N·D = 4, or reg > 0) that the
    solver reaches."""
    torch.manual_seed(1)
    enc = SetEncoder(2, 2, 8, 6).double()
    target = torch.randn(3, 2, 2, dtype=torch.float64)
    with torch.no_grad():
        z = enc(target)
    dspn = DSPN(enc, 2, 2, iters=400, lr=1.0, reg=reg, solver="anderson", backward=backward, tol=1e-11).double()
    y0 = target + 0.05 * torch.randn_like(target)
    y, info = dspn(z, y0=y0)
    return dspn, enc, z, y0, y, info


@pytest.mark.parametrize("reg", [0.0, 0.1])
@pytest.mark.parametrize("backward", [IFT(tol=1e-12, max_iter=100), Neumann(1)])
def test_implicit_gradient_of_a_converged_dspn_matches_the_dense_oracle(backward, reg):
    dspn, enc, z, y0, y, info = _converged_dspn(backward, reg)
    assert bool(info.converged.all())
    weight = torch.randn_like(y)
    params = list(enc.parameters())
    grads = torch.autograd.grad((y * weight).sum(), params)
    y_star = y.detach()
    f = lambda s: dspn.step(s, z, y0)  # noqa: E731
    jac = torch.autograd.functional.jacobian(f, y_star).reshape(y_star.numel(), y_star.numel())
    u = weight.reshape(-1)
    if isinstance(backward, IFT):  # uᵀ(I - J)^-1 ∂f/∂θ
        u = torch.linalg.solve((torch.eye(u.numel(), dtype=u.dtype) - jac).T, u)
    expected = torch.autograd.grad(f(y_star), params, u.reshape_as(y_star))
    for got, want in zip(grads, expected):
        torch.testing.assert_close(got, want, rtol=1e-6, atol=1e-9)


def test_spectral_norm_of_the_dspn_step_matches_the_dense_jacobian():
    """The diagnostics linearise the step with torch.func transforms; the step switches to torch.func.grad."""
    dspn, enc, z, y0, y, _ = _converged_dspn("neumann", reg=0.1)
    f = lambda s: dspn.step(s, z, y0)  # noqa: E731
    sigma = spectral_norm(f, y.detach(), iters=20, tol=1e-8)
    for b in range(3):
        jac = torch.autograd.functional.jacobian(lambda s: dspn.step(s, z[b:b + 1], y0[b:b + 1]),
                                                 y[b:b + 1].detach()).reshape(4, 4)
        assert sigma[b].item() == pytest.approx(torch.linalg.matrix_norm(jac, ord=2).item(), rel=1e-6)


def test_memory_kept_for_backward_grows_with_inner_steps_only_when_unrolled():
    """The inner gradient builds and frees a graph at every step of a no-grad solve; none of it is kept."""
    from deqkit.diagnostics import saved_tensor_bytes

    torch.manual_seed(0)
    enc = SetEncoder(8, 8, 32, 32)
    z = torch.randn(16, 32)
    saved = {}
    for backward in ("unrolled", "neumann", "ift"):
        for iters in (5, 20):
            dspn = DSPN(enc, 8, 8, iters=iters, reg=0.1, backward=backward)
            saved[backward, iters] = saved_tensor_bytes(lambda: dspn(z)[0])[1]
    assert saved["unrolled", 20] > 3 * saved["unrolled", 5]
    for backward in ("neumann", "ift"):
        assert saved[backward, 20] == saved[backward, 5] < saved["unrolled", 5]


def test_momentum_step_is_torch_sgd_with_nesterov_on_the_inner_objective():
    from deqkit.nn.dspn import inner_objective

    torch.manual_seed(0)
    enc = SetEncoder(3, 4, 8, 5)
    z, start = torch.randn(2, 5), torch.randn(2, 4, 3)
    dspn = DSPN(enc, 4, 3, iters=6, lr=0.5, reg=0.1, momentum=0.9, backward="unrolled")  # exactly 6 steps
    with torch.no_grad():
        y, _ = dspn(z, y0=start)
    y_ref = start.clone().requires_grad_()
    opt = torch.optim.SGD([y_ref], lr=0.5, momentum=0.9, nesterov=True)
    for _ in range(6):
        opt.zero_grad()
        inner_objective(enc, y_ref, z, start, 0.1).backward()
        opt.step()
    torch.testing.assert_close(y, y_ref.detach())


def test_exact_implicit_gradient_does_not_depend_on_the_inner_optimiser():
    """With momentum the state is (Y, buf); at the fixed point (Y*, 0) IFT gives Y*'s gradient, the same as
    for plain gradient descent."""
    grads = []
    for momentum in (0.0, 0.5):
        torch.manual_seed(1)
        enc = SetEncoder(2, 2, 8, 6).double()
        target = torch.randn(3, 2, 2, dtype=torch.float64)
        with torch.no_grad():
            z = enc(target)
        dspn = DSPN(enc, 2, 2, iters=500, lr=0.5, reg=0.1, momentum=momentum, solver="anderson",
                    backward=IFT(tol=1e-12, max_iter=200), tol=1e-11).double()
        y, info = dspn(z, y0=target + 0.05 * torch.randn_like(target))
        assert bool(info.converged.all())
        weight = torch.linspace(-1, 1, y.numel(), dtype=torch.float64).reshape_as(y)
        grads.append(torch.autograd.grad((y * weight).sum(), list(enc.parameters())))
    for a, b in zip(*grads):
        torch.testing.assert_close(a, b, rtol=1e-6, atol=1e-9)


def test_batch_mean_inner_objective_makes_a_samples_steps_depend_on_its_batch():
    torch.manual_seed(0)
    enc = SetEncoder(3, 4, 16, 8)
    x = torch.randn(5, 4, 3)
    z = enc(x).detach()
    decoders = {form: DSPN(enc, 4, 3, iters=5, lr=1.0, inner_objective=form, backward="unrolled")
                for form in ("per_sample", "batch_mean")}
    with torch.no_grad():
        for form, dspn in decoders.items():
            alone, _ = dspn(z[:1])
            in_batch, _ = dspn(z)
            if form == "per_sample":
                torch.testing.assert_close(alone[0], in_batch[0])  # iDSPN: a sample's descent is its own
            else:
                assert not torch.allclose(alone[0], in_batch[0], atol=1e-4)
    # the reference's step: the per-sample Huber gradient over the batch size; in a batch of five, each
    # sample's step is a fifth of its step alone
    y = torch.randn(5, 4, 3)
    g_batch = inner_gradient(enc, y, z, form="batch_mean")
    for b in range(5):
        g_alone = inner_gradient(enc, y[b:b + 1], z[b:b + 1], form="batch_mean")
        torch.testing.assert_close(g_batch[b], g_alone[0] / 5)
    # and the Huber loss is F.smooth_l1_loss's: quadratic below 1, linear above
    y = y.requires_grad_()
    huber = torch.nn.functional.smooth_l1_loss(enc(y), z, reduction="mean")
    (expected,) = torch.autograd.grad(huber, y)
    torch.testing.assert_close(inner_gradient(enc, y.detach(), z, form="batch_mean"), expected)
    with pytest.raises(Exception, match="inner objective"):
        DSPN(enc, 4, 3, inner_objective="sum")
