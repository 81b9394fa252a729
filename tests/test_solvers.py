"""Forward solvers: the fixed-point equation holds, samples stop independently, failures are reported."""

from __future__ import annotations

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import deqkit
from deqkit.solvers import Anderson, Broyden, Iteration
from tests.problems import contractive_matrix

SOLVERS = [Iteration(), Anderson(), Broyden(), Anderson(m=2, safeguard=False), Broyden(m=3, safeguard=False)]


def tanh_problem(batch: int, dim: int, norm: float, seed: int = 0, dtype=torch.float64):
    gen = torch.Generator().manual_seed(seed)
    w = contractive_matrix(dim, norm, generator=gen, dtype=dtype)
    x = torch.randn(batch, dim, generator=gen, dtype=dtype)
    return (lambda z: torch.tanh(z @ w.T + x)), torch.zeros(batch, dim, dtype=dtype)


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_solution_satisfies_fixed_point_equation(solver, stop_mode):
    f, z0 = tanh_problem(8, 20, 0.9)
    z, info = solver.solve(f, z0, tol=1e-9, max_iter=300, stop_mode=stop_mode)
    residual = torch.linalg.vector_norm(f(z) - z, dim=1)
    if stop_mode == "rel":
        residual = residual / torch.linalg.vector_norm(f(z), dim=1)
    assert info.converged.all()
    assert (residual <= 1e-9).all()
    torch.testing.assert_close(info.residual, residual, rtol=1e-6, atol=1e-15)


def test_anderson_never_needs_more_evaluations_than_iteration_on_contractions():
    # The case where torchdeq's absolute regularisation makes Anderson slower than plain iteration.
    f, z0 = tanh_problem(64, 256, 0.9, dtype=torch.float32)
    with torch.no_grad():
        _, plain = Iteration().solve(f, z0, tol=1e-5, max_iter=100, stop_mode="abs")
        _, anderson = Anderson().solve(f, z0, tol=1e-5, max_iter=100, stop_mode="abs")
    assert anderson.converged.all() and plain.converged.all()
    assert anderson.nfe.float().mean() <= plain.nfe.float().mean()


def test_anderson_and_broyden_accelerate_a_linear_problem():
    gen = torch.Generator().manual_seed(1)
    q, _ = torch.linalg.qr(torch.randn(60, 60, generator=gen, dtype=torch.float64))
    a = q @ torch.diag(torch.linspace(-0.95, 0.95, 60, dtype=torch.float64)) @ q.T
    b = torch.randn(4, 60, generator=gen, dtype=torch.float64)
    f = lambda z: z @ a.T + b  # noqa: E731
    z0 = torch.zeros_like(b)
    _, plain = Iteration().solve(f, z0, tol=1e-8, max_iter=1000, stop_mode="rel")
    for solver in (Anderson(), Broyden()):
        z, info = solver.solve(f, z0, tol=1e-8, max_iter=1000, stop_mode="rel")
        assert info.converged.all()
        assert info.nfe.float().mean() < 0.5 * plain.nfe.float().mean()
        torch.testing.assert_close(z, torch.linalg.solve(torch.eye(60, dtype=a.dtype) - a, b.T).T, atol=1e-8, rtol=1e-5)


def test_easy_samples_use_fewer_evaluations_and_stop_changing():
    gen = torch.Generator().manual_seed(2)
    dim = 16
    w = contractive_matrix(dim, 1.0, generator=gen)
    x = torch.randn(6, dim, generator=gen, dtype=torch.float64)
    scale = torch.tensor([0.01, 0.01, 0.01, 0.97, 0.97, 0.97], dtype=torch.float64)[:, None]
    f = lambda z: torch.tanh(scale * (z @ w.T) + x)  # noqa: E731
    z, info = Iteration().solve(f, torch.zeros(6, dim, dtype=torch.float64), tol=1e-10, max_iter=500, stop_mode="abs")
    assert info.converged.all()
    assert info.nfe[:3].max() * 3 < info.nfe[3:].min()
    # The trace of a stopped sample repeats its final residual.
    easy_stop = int(info.nfe[0])
    assert (info.trace[easy_stop - 1 :, 0] == info.trace[easy_stop - 1, 0]).all()
    # An easy sample solved inside the batch equals the same sample solved alone.
    f_alone = lambda z: torch.tanh(0.01 * (z @ w.T) + x[:1])  # noqa: E731
    z_alone, info_alone = Iteration().solve(f_alone, torch.zeros(1, dim, dtype=torch.float64), tol=1e-10, max_iter=500, stop_mode="abs")
    torch.testing.assert_close(z[:1], z_alone, rtol=0, atol=1e-14)
    assert info_alone.nfe[0] == info.nfe[0]


def test_fixed_iteration_count_matches_a_plain_loop():
    f, z0 = tanh_problem(5, 12, 0.9)
    z, info = Iteration().solve(f, z0, tol=None, max_iter=7, stop_mode="abs")
    expected = z0
    for _ in range(7):
        expected = f(expected)
    assert torch.equal(z, expected)
    assert (info.nfe == 7).all() and info.trace.shape == (7, 5) and not info.converged.any()


@pytest.mark.parametrize("solver", [Iteration(), Anderson(), Broyden()], ids=str)
def test_divergence_is_reported_per_sample_and_best_finite_iterate_kept(solver):
    x = torch.tensor([[0.5], [3.0]], dtype=torch.float64)
    grow = torch.tensor([[0.5], [1.0]], dtype=torch.float64)
    # Sample 0 contracts to 1; sample 1 is f(z) = exp(z) + 3, which has no fixed point and blows up.
    f = lambda z: torch.where(grow > 0.75, torch.exp(z) + x, 0.5 * z + x)  # noqa: E731
    z, info = solver.solve(f, torch.zeros(2, 1, dtype=torch.float64), tol=1e-8, max_iter=200, stop_mode="abs")
    assert info.converged.tolist() == [True, False]
    assert info.diverged.tolist() == [False, True]
    assert torch.isfinite(z).all() and torch.isfinite(info.residual).all()
    assert abs(float(z[0, 0]) - 1.0) < 1e-7


def test_nan_in_one_sample_does_not_spoil_the_others():
    bad = torch.tensor([[False], [True]])
    f = lambda z: torch.where(bad, torch.full_like(z, float("nan")), 0.5 * z + 1)  # noqa: E731
    z, info = Anderson().solve(f, torch.zeros(2, 3, dtype=torch.float64), tol=1e-8, max_iter=100, stop_mode="rel")
    assert info.converged.tolist() == [True, False] and info.diverged.tolist() == [False, True]
    torch.testing.assert_close(z[0], torch.full((3,), 2.0, dtype=torch.float64), rtol=0, atol=1e-7)
    assert torch.isfinite(z).all()


def test_broyden_memory_is_bounded_by_its_window():
    f, z0 = tanh_problem(3, 10, 0.99)
    memory = Broyden(m=4)._start(z0)
    assert memory.us.shape == (3, 4, 10)
    z, info = Broyden(m=4).solve(f, z0, tol=1e-10, max_iter=200, stop_mode="abs")
    assert info.converged.all()


@pytest.mark.parametrize(
    "make, message",
    [
        (lambda: Anderson(m=0), "m must be"),
        (lambda: Anderson(beta=1.5), "beta"),
        (lambda: Broyden(growth=0.5), "growth"),
        (lambda: Iteration(beta=0), "beta"),
    ],
)
def test_bad_solver_parameters_are_rejected(make, message):
    with pytest.raises(deqkit.ConfigError, match=message):
        make()


@st.composite
def contractive_problems(draw):
    batch = draw(st.integers(1, 5))
    shapes = draw(st.lists(st.lists(st.integers(1, 4), min_size=1, max_size=2), min_size=1, max_size=3))
    structure = draw(st.sampled_from(["tensor", "tuple", "dict", "nested"]))
    norm = draw(st.floats(0.1, 0.9))
    seed = draw(st.integers(0, 2**16))
    solver = draw(st.sampled_from(["iteration", "anderson", "broyden"]))
    return batch, shapes, structure, norm, seed, solver


@settings(max_examples=40, deadline=None)
@given(contractive_problems())
def test_fixed_point_holds_for_random_contractions_and_pytrees(problem):
    batch, shapes, structure, norm, seed, solver = problem
    gen = torch.Generator().manual_seed(seed)
    leaves = [torch.randn(batch, *s, generator=gen, dtype=torch.float64) for s in shapes]
    if structure == "tensor":
        leaves = leaves[:1]
        z0 = leaves[0]
    elif structure == "tuple":
        z0 = tuple(leaves)
    elif structure == "dict":
        z0 = {f"k{i}": leaf for i, leaf in enumerate(leaves)}
    else:
        z0 = {"a": leaves[0], "rest": [tuple(leaves[1:])]}
    spec = deqkit.pytree.spec_of(z0)
    w = contractive_matrix(spec.dim, norm, generator=gen)
    x = torch.randn(batch, spec.dim, generator=gen, dtype=torch.float64)

    def f(state):
        return spec.unflatten(torch.tanh(spec.flatten(state) @ w.T + x))

    z, info = deqkit.fixed_point(f, z0, solver=solver, tol=1e-10, max_iter=500, stop_mode="abs")
    assert type(z) is type(z0)
    flat = spec.flatten(z)
    assert info.converged.all()
    assert (torch.linalg.vector_norm(spec.flatten(f(z)) - flat, dim=1) <= 1e-10).all()


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
def test_a_blow_up_is_divergence_in_both_stop_modes(stop_mode):
    # f(z) = 2z + 1 runs away from its (repelling) fixed point -1; the relative residual stays near 1/2.
    z, info = Iteration().solve(lambda z: 2 * z + 1, torch.zeros(1, 1, dtype=torch.float64), tol=1e-8, max_iter=100, stop_mode=stop_mode)
    assert info.diverged.all() and not info.converged.any() and info.nfe[0] < 100


def test_unrolled_broyden_gives_finite_gradients_when_samples_stop_at_different_times():
    gen = torch.Generator().manual_seed(8)
    w = contractive_matrix(5, 0.9, generator=gen).requires_grad_()
    scale = torch.tensor([[0.1], [0.9]], dtype=torch.float64)
    x = torch.randn(2, 5, generator=gen, dtype=torch.float64)
    f = lambda z: torch.tanh(scale * (z @ w.T) + x)  # noqa: E731
    z, info = deqkit.fixed_point(f, torch.zeros(2, 5, dtype=torch.float64), solver="broyden", backward="unrolled", tol=1e-8, max_iter=100)
    assert info.nfe[0] < info.nfe[1]
    (grad,) = torch.autograd.grad(z[1].sum(), w)
    assert torch.isfinite(grad).all()


def test_anderson_is_at_most_one_evaluation_behind_iteration_on_random_contractions():
    extra, anderson_total, iteration_total = [], 0, 0
    for seed in range(100):
        gen = torch.Generator().manual_seed(seed)
        dim = int(torch.randint(2, 40, (1,), generator=gen))
        w = contractive_matrix(dim, 0.99 * float(torch.rand(1, generator=gen)), generator=gen)
        x = torch.randn(4, dim, generator=gen, dtype=torch.float64)
        f = (lambda z: torch.tanh(z @ w.T + x)) if seed % 2 else (lambda z: z @ w.T + x)
        for tol in (1e-4, 1e-8):
            z0 = torch.zeros(4, dim, dtype=torch.float64)
            _, anderson = Anderson().solve(f, z0, tol=tol, max_iter=500, stop_mode="rel")
            _, plain = Iteration().solve(f, z0, tol=tol, max_iter=500, stop_mode="rel")
            assert anderson.converged.all()
            extra.append(int((anderson.nfe - plain.nfe).max()))
            anderson_total += int(anderson.nfe.sum())
            iteration_total += int(plain.nfe.sum())
    assert max(extra) <= 1
    assert anderson_total < 0.9 * iteration_total
