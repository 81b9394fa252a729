"""Gradient estimators against a dense implicit-function-theorem oracle, and their memory cost."""

from __future__ import annotations

import pytest
import torch

import deqkit
from deqkit.backward import IFT, Neumann, Phantom, Unrolled
from deqkit.diagnostics import saved_tensor_bytes
from deqkit.linear import GMRES
from deqkit.solvers import Anderson, Broyden, Iteration
from tests.problems import contractive_matrix, dense_ift_grads, relative_error

DIM, BATCH = 7, 3


def make_problem(structure: str, seed: int = 0, norm: float = 0.8):
    """f(state) = tanh(W flat(state) + x), unflattened to ``structure``; returns f, z0, params, cotangent."""
    gen = torch.Generator().manual_seed(seed)
    w = contractive_matrix(DIM, norm, generator=gen).requires_grad_()
    x = torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64).requires_grad_()
    split = {"tensor": None, "tuple": (3, 4), "dict": (2, 5)}[structure]

    def pack(flat):
        if split is None:
            return flat
        a, b = torch.split(flat, split, dim=1)
        return (a, b) if structure == "tuple" else {"a": a, "b": b.reshape(BATCH, 5, 1)}

    def unpack(state):
        if structure == "tensor":
            return state
        if structure == "tuple":
            return torch.cat(state, 1)
        return torch.cat([state["a"], state["b"].reshape(BATCH, 5)], 1)

    f = lambda state: pack(torch.tanh(unpack(state) @ w.T + x))  # noqa: E731
    z0 = pack(torch.zeros(BATCH, DIM, dtype=torch.float64))
    v = pack(torch.randn(BATCH, DIM, generator=gen, dtype=torch.float64))
    return f, z0, (w, x), v, unpack


def grads_of(f, z0, params, v, unpack, **options):
    z, _ = deqkit.fixed_point(f, z0, tol=1e-13, max_iter=1000, **options)
    loss = (unpack(z) * unpack(v)).sum()
    return torch.autograd.grad(loss, params)


def oracle(f, z0, params, v):
    with torch.no_grad():
        z_star, info = deqkit.fixed_point(f, z0, tol=1e-14, max_iter=1000, solver="iteration")
    assert info.converged.all()
    return dense_ift_grads(f, z_star, params, v)


IFT_VARIANTS = [
    IFT(),
    IFT(solver=GMRES(restart=3), tol=1e-10, max_iter=200),
    IFT(solver=Iteration(), tol=1e-12, max_iter=500),
    IFT(solver=Anderson(), tol=1e-12, max_iter=200),
    IFT(solver=Broyden(), tol=1e-12, max_iter=200),
]


@pytest.mark.parametrize("structure", ["tensor", "tuple", "dict"])
@pytest.mark.parametrize("estimator", IFT_VARIANTS, ids=str)
def test_ift_matches_the_dense_oracle(structure, estimator):
    f, z0, params, v, unpack = make_problem(structure)
    expected = oracle(f, z0, params, v)
    got = grads_of(f, z0, params, v, unpack, backward=estimator)
    for g, e in zip(got, expected):
        assert relative_error(g, e) < 1e-6


@pytest.mark.parametrize("structure", ["tensor", "dict"])
def test_neumann_converges_to_the_implicit_gradient_as_k_grows(structure):
    f, z0, params, v, unpack = make_problem(structure)
    expected = oracle(f, z0, params, v)
    errors = [relative_error(grads_of(f, z0, params, v, unpack, backward=Neumann(k))[0], expected[0]) for k in (1, 2, 4, 8, 32)]
    assert all(a > b for a, b in zip(errors, errors[1:]))
    assert errors[0] > 0.05 and errors[-1] < 1e-4


def test_phantom_without_damping_is_neumann():
    f, z0, params, v, unpack = make_problem("tuple")
    phantom = grads_of(f, z0, params, v, unpack, backward=Phantom(k=3, damping=1.0))
    neumann = grads_of(f, z0, params, v, unpack, backward=Neumann(k=3))
    for a, b in zip(phantom, neumann):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_phantom_with_damping_approaches_the_implicit_gradient():
    f, z0, params, v, unpack = make_problem("tensor")
    expected = oracle(f, z0, params, v)
    errors = [relative_error(grads_of(f, z0, params, v, unpack, backward=Phantom(k=k, damping=0.7))[0], expected[0]) for k in (1, 5, 40)]
    assert errors[0] > errors[1] > errors[2] and errors[2] < 1e-3


@pytest.mark.parametrize("structure", ["tensor", "dict"])
def test_unrolled_equals_autograd_through_the_plain_loop(structure):
    f, z0, params, v, unpack = make_problem(structure)
    z, _ = deqkit.fixed_point(f, z0, solver="iteration", backward="unrolled", tol=None, max_iter=6)
    got = torch.autograd.grad((unpack(z) * unpack(v)).sum(), params)
    loop = z0
    for _ in range(6):
        loop = f(loop)
    expected = torch.autograd.grad((unpack(loop) * unpack(v)).sum(), params)
    for a, b in zip(got, expected):
        torch.testing.assert_close(a, b, rtol=1e-12, atol=1e-14)


def test_unrolled_to_convergence_approaches_the_implicit_gradient():
    f, z0, params, v, unpack = make_problem("tensor")
    expected = oracle(f, z0, params, v)
    got = grads_of(f, z0, params, v, unpack, backward=Unrolled(), solver="iteration")
    assert relative_error(got[0], expected[0]) < 1e-6


def test_gradients_follow_grad_mode_not_training_mode():
    f, z0, params, v, unpack = make_problem("tensor")
    layer = deqkit.FixedPoint(lambda z: f(z), tol=1e-12, max_iter=500)
    layer.eval()
    z, _ = layer(z0)
    assert z.requires_grad  # eval mode, grad enabled: gradients are recorded
    evaluated = torch.autograd.grad((z * v).sum(), params)
    layer.train()
    with torch.no_grad():
        z_nograd, _ = layer(z0)
    assert not z_nograd.requires_grad and z_nograd.grad_fn is None
    trained = torch.autograd.grad((layer(z0)[0] * v).sum(), params)
    for a, b in zip(evaluated, trained):
        torch.testing.assert_close(a, b)


def test_double_backward_through_ift_raises_instead_of_being_wrong():
    f, z0, params, v, unpack = make_problem("tensor")
    z, _ = deqkit.fixed_point(f, z0, backward="ift")
    with pytest.raises(RuntimeError, match="double backward"):
        torch.autograd.grad((z * v).sum(), params, create_graph=True)


def test_double_backward_through_neumann_is_the_derivative_of_its_approximation():
    f, z0, (w, x), v, unpack = make_problem("tensor")
    z, _ = deqkit.fixed_point(f, z0, backward=Neumann(2), tol=1e-12)
    (gx,) = torch.autograd.grad((z * v).sum(), x, create_graph=True)
    (hx,) = torch.autograd.grad(gx.pow(2).sum(), x)
    with torch.no_grad():
        z_star, _ = deqkit.fixed_point(f, z0, tol=1e-12)
    explicit = f(f(z_star))
    (gx2,) = torch.autograd.grad((explicit * v).sum(), x, create_graph=True)
    (hx2,) = torch.autograd.grad(gx2.pow(2).sum(), x)
    torch.testing.assert_close(hx, hx2)


@pytest.mark.parametrize("backward", ["neumann", "ift", "phantom", "unrolled"])
def test_memory_saved_for_backward_is_constant_except_for_unrolled(backward):
    gen = torch.Generator().manual_seed(0)
    w = contractive_matrix(64, 0.9, generator=gen, dtype=torch.float32).requires_grad_()
    x = torch.randn(16, 64, generator=gen)
    f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
    sizes = [
        saved_tensor_bytes(lambda n=n: deqkit.fixed_point(f, torch.zeros(16, 64), solver="iteration", backward=backward, tol=None, max_iter=n))[1]
        for n in (5, 10, 20)
    ]
    if backward == "unrolled":
        assert sizes[1] - sizes[0] == pytest.approx((sizes[2] - sizes[1]) / 2, rel=0.05) and sizes[1] > sizes[0]
    else:
        assert sizes[0] == sizes[1] == sizes[2]


def test_estimator_names_and_parameters_are_checked():
    with pytest.raises(deqkit.ConfigError, match="valid choices: ift, neumann, phantom, unrolled"):
        deqkit.fixed_point(lambda z: z, torch.zeros(1, 1), backward="implicit")
    with pytest.raises(deqkit.ConfigError, match="k must be"):
        Neumann(k=0)
    with pytest.raises(deqkit.ConfigError, match="damping"):
        Phantom(damping=0.0)
    with pytest.raises(deqkit.ConfigError, match="valid choices"):
        IFT(solver="cg")


@pytest.mark.parametrize("structure", ["tensor", "dict"])
@pytest.mark.parametrize("estimator", [IFT(tol=1e-12, max_iter=200), Neumann(2)], ids=str)
def test_z0_grad_straight_through_gives_z0_the_results_gradient_and_leaves_the_rest_exact(structure, estimator):
    """With ``z0_grad="straight_through"`` z0's gradient is ∂ℓ/∂z* itself (identity), the parameters'
    gradients are those without the option (for IFT: the dense oracle's), and the value is unchanged."""
    f, z0, params, v, unpack = make_problem(structure)
    z0 = torch.utils._pytree.tree_map(lambda t: t.clone().requires_grad_(), z0)
    plain, _ = deqkit.fixed_point(f, z0, tol=1e-13, max_iter=1000, backward=estimator)
    z, _ = deqkit.fixed_point(f, z0, tol=1e-13, max_iter=1000, backward=estimator, z0_grad="straight_through")
    assert torch.equal(unpack(z), unpack(plain))
    leaves = torch.utils._pytree.tree_leaves(z0)
    *param_grads, = torch.autograd.grad((unpack(z) * unpack(v)).sum(), (*params, *leaves))
    got_params, got_z0 = param_grads[:2], param_grads[2:]
    for leaf_grad, cotangent in zip(got_z0, torch.utils._pytree.tree_leaves(v)):
        torch.testing.assert_close(leaf_grad, cotangent, rtol=0, atol=0)
    reference = oracle(f, z0, params, v) if isinstance(estimator, IFT) else grads_of(
        f, z0, params, v, unpack, backward=estimator)
    for g, e in zip(got_params, reference):
        assert relative_error(g, e) < 1e-6
    default, _ = deqkit.fixed_point(f, z0, tol=1e-13, max_iter=1000, backward=estimator)
    assert all(g is None for g in torch.autograd.grad(unpack(default).sum(), leaves, allow_unused=True))


def test_unknown_z0_grad_is_a_config_error():
    with pytest.raises(deqkit.ConfigError, match="unknown z0_grad 'identity'; valid choices: none, straight_through"):
        deqkit.fixed_point(torch.tanh, torch.zeros(2, 3), z0_grad="identity")
