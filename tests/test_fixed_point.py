"""The public entry points: options are checked, FixedPoint wraps steps, transforms and compile work."""

from __future__ import annotations

import pytest
import torch
from torch import nn

import deqkit
from deqkit.backward import IFT, Neumann, Phantom, Unrolled
from tests.problems import contractive_matrix


class TanhStep(nn.Module):
    """z -> tanh(W z + U x): a DEQ block that knows nothing of deqkit."""

    def __init__(self, dim: int):
        super().__init__()
        gen = torch.Generator().manual_seed(0)
        self.w = nn.Parameter(contractive_matrix(dim, 0.7, generator=gen, dtype=torch.float32))
        self.u = nn.Linear(dim, dim)

    def forward(self, z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        return torch.tanh(z @ self.w.T + self.u(x))


def test_fixed_point_module_solves_and_trains():
    layer = deqkit.FixedPoint(TanhStep(6), solver="anderson", backward="ift", tol=1e-6)
    assert {name for name, _ in layer.named_parameters()} == {"step.w", "step.u.weight", "step.u.bias"}
    x = torch.randn(4, 6)
    z, info = layer(torch.zeros(4, 6), x)
    torch.testing.assert_close(z, layer.step(z, x), atol=1e-5, rtol=0)
    assert info.nfe.shape == (4,) and info.nfe.dtype == torch.long and info.converged.all()
    z.pow(2).sum().backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in layer.parameters())


def test_last_record_lets_diagnostics_rebuild_the_map():
    layer = deqkit.FixedPoint(TanhStep(5), tol=1e-7, max_iter=200)
    x = torch.randn(3, 5)
    layer(torch.zeros(3, 5), x)
    record = layer.last
    assert not record.z.requires_grad and torch.equal(record.inputs[0], x)
    f = layer.closure(*record.inputs)
    torch.testing.assert_close(f(record.z), record.z, atol=1e-6, rtol=0)


def test_solver_and_backward_can_be_swapped_by_name_or_object():
    layer = deqkit.FixedPoint(TanhStep(4))
    layer.backward = "neumann"
    assert layer.backward == Neumann(k=1)
    layer.solver = deqkit.solvers.Broyden(m=3)
    assert isinstance(layer.solver, deqkit.solvers.Broyden)
    with pytest.raises(deqkit.ConfigError, match="unknown backward 'jfb'"):
        layer.backward = "jfb"


@pytest.mark.parametrize(
    "kwargs, message",
    [
        ({"tolerance": 1e-3}, "unknown option 'tolerance' for fixed_point; valid options: backward, inputs, max_iter, solver, stop_mode, tol"),
        ({"solver": "newton"}, "unknown solver 'newton'; valid choices: anderson, broyden, iteration"),
        ({"stop_mode": "max"}, "unknown stop_mode 'max'"),
        ({"tol": -1.0}, "tol=-1.0 is invalid"),
        ({"max_iter": 0}, "max_iter=0 is invalid"),
    ],
)
def test_bad_options_name_the_key_and_the_valid_choices(kwargs, message):
    with pytest.raises(deqkit.ConfigError) as error:
        deqkit.fixed_point(lambda z: z, torch.zeros(1, 1), **kwargs)
    assert message in str(error.value) and "\n" not in str(error.value)


def test_module_rejects_unknown_options():
    with pytest.raises(deqkit.ConfigError, match="unknown option 'f_tol' for FixedPoint"):
        deqkit.FixedPoint(TanhStep(2), f_tol=1e-3)


def test_state_structure_and_dtypes_round_trip():
    z0 = {"slots": torch.zeros(2, 3, 4), "extra": (torch.zeros(2, 5, dtype=torch.float64),)}
    z, info = deqkit.fixed_point(lambda s: {"slots": 0.5 * s["slots"] + 1, "extra": (0.5 * s["extra"][0] - 1,)}, z0, tol=1e-7)
    assert z["slots"].shape == (2, 3, 4) and z["extra"][0].dtype == torch.float64
    torch.testing.assert_close(z["slots"], torch.full((2, 3, 4), 2.0), atol=1e-5, rtol=0)
    with pytest.raises(ValueError, match="same structure"):
        deqkit.fixed_point(lambda s: s["slots"], z0)


def _tanh_solve(w, x, backward="ift"):
    z, _ = deqkit.fixed_point(lambda z: torch.tanh(z @ w.T + x), torch.zeros_like(x), tol=1e-9, max_iter=200, backward=backward)
    return z


def test_vmap_over_a_solve_matches_a_python_loop():
    gen = torch.Generator().manual_seed(3)
    w = contractive_matrix(6, 0.8, generator=gen)
    xs = torch.randn(4, 2, 6, generator=gen, dtype=torch.float64)
    batched = torch.func.vmap(lambda x: _tanh_solve(w, x))(xs)
    looped = torch.stack([_tanh_solve(w, x) for x in xs])
    torch.testing.assert_close(batched, looped, atol=1e-8, rtol=0)


@pytest.mark.parametrize("backward", [IFT(), IFT(solver="anderson", tol=1e-10), "unrolled", Neumann(3)], ids=str)
def test_per_sample_gradients_with_vmap_of_grad(backward):
    gen = torch.Generator().manual_seed(4)
    w = contractive_matrix(5, 0.8, generator=gen)
    xs = torch.randn(3, 5, generator=gen, dtype=torch.float64)
    loss = lambda w, x: _tanh_solve(w, x[None], backward).pow(2).sum()  # noqa: E731
    per_sample = torch.func.vmap(torch.func.grad(loss), in_dims=(None, 0))(w, xs)
    w_leaf = w.clone().requires_grad_()
    expected = torch.stack([torch.autograd.grad(loss(w_leaf, x), w_leaf)[0] for x in xs])
    torch.testing.assert_close(per_sample, expected, atol=1e-7, rtol=1e-6)


def test_torch_compile_of_a_model_with_a_fixed_point_layer():
    torch._dynamo.reset()
    layer = deqkit.FixedPoint(TanhStep(4), tol=1e-6)
    x = torch.randn(3, 4)
    eager, _ = layer(torch.zeros(3, 4), x)
    compiled = torch.compile(lambda x: layer(torch.zeros(3, 4), x)[0], backend="eager")
    out = compiled(x)
    torch.testing.assert_close(out, eager)
    grads = torch.autograd.grad(out.sum(), list(layer.parameters()))
    expected = torch.autograd.grad(eager.sum(), list(layer.parameters()))
    for a, b in zip(grads, expected):
        torch.testing.assert_close(a, b)


@pytest.mark.parametrize("solver", ["anderson", "broyden"])
def test_low_precision_states_solve_in_float32_and_keep_their_dtype(solver):
    gen = torch.Generator().manual_seed(5)
    w = contractive_matrix(8, 0.5, generator=gen, dtype=torch.float32).requires_grad_()
    x = torch.randn(4, 8, generator=gen)
    f = lambda z: torch.tanh(z @ w.T.bfloat16() + x.bfloat16())  # noqa: E731
    z, info = deqkit.fixed_point(f, torch.zeros(4, 8, dtype=torch.bfloat16), solver=solver, tol=1e-2)
    assert z.dtype == torch.bfloat16 and info.converged.all()
    z.float().sum().backward()
    assert torch.isfinite(w.grad).all() and w.grad.abs().sum() > 0


def test_nan_cotangent_gives_nan_gradients_not_an_exception():
    layer = deqkit.FixedPoint(TanhStep(4), tol=1e-6)
    z, _ = layer(torch.zeros(2, 4), torch.randn(2, 4))
    (z.sum() * float("nan")).backward()
    assert torch.isnan(layer.step.w.grad).all()


@pytest.mark.parametrize("solver", ["iteration", "anderson", "broyden"])
def test_solvers_run_under_bf16_autocast(solver):
    layer = deqkit.FixedPoint(TanhStep(8), solver=solver, tol=1e-2)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        z, info = layer(torch.zeros(4, 8), torch.randn(4, 8))
    assert z.dtype in (torch.float32, torch.bfloat16) and info.converged.all()
    z.float().sum().backward()
    assert torch.isfinite(layer.step.w.grad).all()


@pytest.mark.parametrize("solver", ["iteration", "anderson", "broyden"])
def test_vmap_with_an_unbatched_initial_state(solver):
    gen = torch.Generator().manual_seed(6)
    w = contractive_matrix(6, 0.8, generator=gen)
    xs = torch.randn(3, 2, 6, generator=gen, dtype=torch.float64)

    def solve(x):
        f = lambda z: torch.tanh(z @ w.T + x)  # noqa: E731
        return deqkit.fixed_point(f, torch.zeros(2, 6, dtype=torch.float64), solver=solver, tol=1e-9, max_iter=200)[0]

    torch.testing.assert_close(torch.func.vmap(solve)(xs), torch.stack([solve(x) for x in xs]), atol=1e-8, rtol=0)


def test_second_derivative_through_ift_raises_under_torch_func_too():
    gen = torch.Generator().manual_seed(7)
    w = contractive_matrix(3, 0.5, generator=gen)
    loss = lambda s: _tanh_solve(s * w, torch.ones(1, 3, dtype=torch.float64)).sum()  # noqa: E731
    s = torch.tensor(1.0, dtype=torch.float64)
    torch.func.grad(loss)(s)  # first derivatives are fine
    with pytest.raises(RuntimeError, match="double backward"):
        torch.func.grad(torch.func.grad(loss))(s)


def test_complex_states_are_rejected_with_one_line():
    with pytest.raises(TypeError, match="real floating point"):
        deqkit.fixed_point(lambda z: z, torch.zeros(1, 2, dtype=torch.complex64))


ESTIMATORS = [IFT(), Neumann(1), Neumann(3), Phantom(k=2, damping=0.5), Unrolled()]


@pytest.mark.parametrize("backward", ESTIMATORS, ids=repr)
@pytest.mark.parametrize("tol", [None, 1e-3])
def test_value_is_the_same_with_and_without_gradients(backward, tol):
    """Evaluation (no_grad) computes what training computes: the estimator's steps from z* run in both modes."""
    layer = deqkit.FixedPoint(TanhStep(6), solver="iteration", backward=backward, tol=tol, max_iter=3)
    z0, x = torch.zeros(4, 6), torch.randn(4, 6, generator=torch.Generator().manual_seed(1))
    trained, _ = layer(z0, x)
    with torch.no_grad():
        evaluated, _ = layer(z0, x)
    assert trained.requires_grad and not evaluated.requires_grad
    torch.testing.assert_close(evaluated, trained.detach(), rtol=0, atol=0)


@pytest.mark.parametrize("backward, extra", [(Unrolled(), 0), (IFT(), 1), (Neumann(1), 1), (Neumann(3), 3),
                                             (Phantom(k=2, damping=0.5), 2)], ids=repr)
def test_a_fixed_count_loop_evaluates_f_max_iter_times_plus_the_estimators_steps(backward, extra):
    calls = []
    step = TanhStep(5)
    layer = deqkit.FixedPoint(lambda z, x: calls.append(1) or step(z, x), solver="iteration", backward=backward,
                              tol=None, max_iter=3)
    z0, x = torch.zeros(2, 5), torch.randn(2, 5)
    for grad in (True, False):
        calls.clear()
        with torch.set_grad_enabled(grad):
            _, info = layer(z0, x)
        assert len(calls) == 3 + extra and (info.nfe == 3).all()  # info.nfe counts the solver's evaluations


@pytest.mark.parametrize("build, message", [
    (lambda: deqkit.solvers.Anderson(window=3), "unknown option 'window' for Anderson(); valid options: beta, "
                                                "check_every, m, regularization, safeguard"),
    (lambda: deqkit.solvers.Broyden(memory=4), "unknown option 'memory' for Broyden()"),
    (lambda: IFT(tolerance=1e-6), "unknown option 'tolerance' for IFT(); valid options: max_iter, solver, "
                                  "stop_mode, tol"),
    (lambda: Neumann(1, 2), "Neumann() takes at most 1 positional options (k), got 2"),
    (lambda: Unrolled(k=1), "unknown option 'k' for Unrolled(); valid options: \n"),
], ids=["anderson", "broyden", "ift", "neumann-positional", "unrolled"])
def test_unknown_solver_and_estimator_options_are_the_same_config_error(build, message):
    with pytest.raises(deqkit.ConfigError) as err:
        build()
    assert str(err.value).startswith(message.rstrip("\n")), str(err.value)


def test_a_dict_state_matches_by_key_not_by_order():
    """f may build its dict in another key order; the solve and its gradient are those of the same f
    returning the keys in z0's order."""
    gen = torch.Generator().manual_seed(7)
    w = contractive_matrix(4, 0.6, generator=gen, dtype=torch.float32).requires_grad_()
    x = torch.randn(3, 4, generator=gen)

    def step(state, reverse):
        a = torch.tanh(state["b"] @ w.T + x)
        b = 0.5 * torch.tanh(state["a"]) + 0.1 * x
        return {"b": b, "a": a} if reverse else {"a": a, "b": b}

    z0 = {"a": torch.zeros(3, 4), "b": torch.zeros(3, 4)}
    results = []
    for reverse in (False, True):
        z, info = deqkit.fixed_point(lambda s: step(s, reverse), z0, tol=1e-6, max_iter=100)
        assert list(z) == ["a", "b"] and info.converged.all()
        results.append((z, torch.autograd.grad(z["a"].sum() + z["b"].sum(), w)[0]))
    (z_in_order, g_in_order), (z_reversed, g_reversed) = results
    torch.testing.assert_close(z_reversed["a"], z_in_order["a"])
    torch.testing.assert_close(g_reversed, g_in_order)
