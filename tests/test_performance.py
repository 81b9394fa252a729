"""Performance features keep results exact: per-sample compaction, the lean fixed-count loop, torch.compile."""

from __future__ import annotations

import subprocess
import sys
import warnings

import pytest
import torch

import deqkit
from deqkit.backward import IFT, Neumann
from deqkit.nn.slot_attention import SlotAttention
from deqkit.solvers import Anderson, Broyden, Iteration
from tests.problems import contractive_matrix

SOLVERS = [Iteration(), Anderson(), Broyden(), Broyden(m=3)]


def mixed_problem(batch: int = 24, dim: int = 32, dtype=torch.float32):
    """tanh(z Wᵀ + x Uᵀ) with ‖W‖ = 0.95, a third of the samples started at their fixed point."""
    gen = torch.Generator().manual_seed(11)
    w = contractive_matrix(dim, 0.95, generator=gen, dtype=dtype)
    u = torch.randn(dim, dim, generator=gen, dtype=dtype) / dim**0.5
    x = torch.randn(batch, dim, generator=gen, dtype=dtype)
    rows = []

    def step(z: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        rows.append(z.shape[0])
        return torch.tanh(z @ w.T + x @ u.T)

    with torch.no_grad():
        z_star, _ = deqkit.fixed_point(step, torch.zeros(batch, dim, dtype=dtype), inputs=(x,), solver="iteration",
                                       tol=1e-7, max_iter=1000, stop_mode="abs")
    z0 = torch.zeros(batch, dim, dtype=dtype)
    z0[::3] = z_star[::3]
    return step, z0, x, rows


def assert_same_solve(a, b) -> None:
    (za, ia), (zb, ib) = a, b
    assert torch.equal(za, zb)
    for name in ("nfe", "residual", "converged", "diverged", "trace"):
        assert torch.equal(getattr(ia, name), getattr(ib, name)), name


@pytest.mark.parametrize("solver", SOLVERS, ids=str)
def test_compaction_is_bit_identical_and_evaluates_only_running_samples(solver):
    step, z0, x, rows = mixed_problem()
    with torch.no_grad():
        closed = deqkit.fixed_point(lambda z: step(z, x), z0, solver=solver, tol=1e-6, max_iter=200, stop_mode="abs")
        closed_rows = sum(rows)
        rows.clear()
        compacted = deqkit.fixed_point(step, z0, inputs=(x,), solver=solver, tol=1e-6, max_iter=200, stop_mode="abs")
    assert_same_solve(closed, compacted)
    info = compacted[1]
    assert info.converged.all() and info.nfe[::3].max() < info.nfe.max()
    # Row evaluations: the full batch until a quarter has stopped, then only running samples (≥ 4 rows).
    assert sum(rows) < closed_rows and min(rows) >= 4
    assert sum(rows) <= sum(max(4, int(n)) for n in (info.nfe[None] > torch.arange(int(info.nfe.max()))[:, None]).sum(1)) + 24 * 2


def test_compaction_with_pytree_state_and_inputs_is_bit_identical():
    # Per-sample sizes are multiples of 16 floats: vectorised kernels then treat every row alike whatever
    # the number of rows (a SIMD remainder loop would round a tail row differently).
    gen = torch.Generator().manual_seed(12)
    w = contractive_matrix(16, 0.9, generator=gen, dtype=torch.float32)
    inputs = ({"x": torch.randn(10, 16, generator=gen)}, torch.linspace(0.05, 1.0, 10)[:, None], "unused")

    def step(state, data, scale, _tag):
        a, b = state["a"], state["b"]
        return {"a": torch.tanh(scale * (a @ w.T) + data["x"]), "b": (0.5 * b + a.sum(1, keepdim=True)[:, :, None] / 8)}

    z0 = {"a": torch.zeros(10, 16), "b": torch.zeros(10, 2, 8)}
    with torch.no_grad():
        closed = deqkit.fixed_point(lambda z: step(z, *inputs), z0, solver="anderson", tol=1e-6, max_iter=300)
        compacted = deqkit.fixed_point(step, z0, inputs=inputs, solver="anderson", tol=1e-6, max_iter=300)
    for key in ("a", "b"):
        assert torch.equal(closed[0][key], compacted[0][key])
    assert torch.equal(closed[1].nfe, compacted[1].nfe) and compacted[1].converged.all()


def test_fixed_point_module_passes_inputs_and_falls_back_when_the_step_closes_over_samples():
    step, z0, x, rows = mixed_problem(batch=12)
    layer = deqkit.FixedPoint(step, solver="anderson", tol=1e-6, max_iter=200, stop_mode="abs")
    rows.clear()
    with torch.no_grad():
        z, info = layer(z0, x)
    assert min(rows) < 12  # compacted
    # A step that also closes over per-sample data cannot be evaluated on a subset: whole batches instead.
    other = torch.randn(12, 32)
    rows.clear()
    with torch.no_grad():
        z2, _ = deqkit.fixed_point(lambda z, x: step(z, x) * 0.5 + 0.01 * other, z0, inputs=(x,), tol=1e-6, max_iter=200)
        z3, _ = deqkit.fixed_point(lambda z: step(z, x) * 0.5 + 0.01 * other, z0, tol=1e-6, max_iter=200)
    assert torch.equal(z2, z3)


def test_gradients_with_inputs_match_the_closure():
    step, z0, x, _ = mixed_problem(batch=6)
    x = x.clone().requires_grad_()
    z_a, _ = deqkit.fixed_point(step, z0, inputs=(x,), tol=1e-6, max_iter=200)
    g_a = torch.autograd.grad(z_a.sum(), x)[0]
    z_b, _ = deqkit.fixed_point(lambda z: step(z, x), z0, tol=1e-6, max_iter=200)
    g_b = torch.autograd.grad(z_b.sum(), x)[0]
    assert torch.equal(z_a, z_b) and torch.equal(g_a, g_b)


@pytest.mark.parametrize("stop_mode", ["abs", "rel"])
@pytest.mark.parametrize("max_iter", [1, 8, 19])
def test_fixed_count_trace_is_each_steps_residual(stop_mode, max_iter):
    step, z0, x, _ = mixed_problem(batch=5, dtype=torch.float64)
    f = lambda z: step(z, x)  # noqa: E731
    with torch.no_grad():
        z, info = deqkit.fixed_point(f, z0, solver=Iteration(beta=0.7), backward="unrolled", tol=None,
                                     max_iter=max_iter, stop_mode=stop_mode)
    expected, zt = [], z0
    for _ in range(max_iter):
        fz = f(zt)
        res = torch.linalg.vector_norm(fz - zt, dim=1)
        expected.append(res / torch.linalg.vector_norm(fz, dim=1) if stop_mode == "rel" else res)
        zt = zt + 0.7 * (fz - zt)
    assert torch.equal(z, zt)
    torch.testing.assert_close(info.trace, torch.stack(expected), rtol=1e-12, atol=0)
    assert torch.equal(info.residual, info.trace[-1]) and (info.nfe == max_iter).all()


def test_ift_with_a_fixed_adjoint_step_count_matches_the_tolerance_version():
    step, z0, x, _ = mixed_problem(batch=4, dtype=torch.float64)
    x = x.clone().requires_grad_()
    grads = []
    for backward in (IFT(solver="iteration", tol=None, max_iter=400), IFT(tol=1e-12, max_iter=200)):
        z, _ = deqkit.fixed_point(step, z0, inputs=(x,), tol=1e-12, max_iter=1000, backward=backward)
        grads.append(torch.autograd.grad(z.pow(2).sum(), x)[0])
    torch.testing.assert_close(grads[0], grads[1], rtol=1e-7, atol=1e-9)
    with pytest.raises(deqkit.ConfigError, match="needs a fixed-point adjoint solver"):
        IFT(tol=None)


@pytest.mark.parametrize("backward", [Neumann(1), IFT(solver="iteration", tol=None, max_iter=6)], ids=str)
def test_fixed_count_slot_attention_compiles_as_one_graph_without_warnings(backward):
    torch.manual_seed(0)
    sa = SlotAttention(3, 8, 8, 16, iters=3, solver="iteration", backward=backward, tol=None, init="learned")
    images = torch.randn(2, 10, 8)

    def loss(images: torch.Tensor) -> torch.Tensor:
        slots, attn, info = sa(images)
        return slots.pow(2).mean() + attn.mean() + 0 * info.residual.sum()

    params = list(sa.parameters())
    eager = torch.autograd.grad(loss(images), params)
    torch._dynamo.reset()
    torch._dynamo.utils.counters.clear()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        compiled = torch.autograd.grad(torch.compile(loss, fullgraph=True, backend="aot_eager")(images), params)
    assert torch._dynamo.utils.counters["stats"]["unique_graphs"] == 1
    assert not [w for w in caught if "deqkit" in w.filename or "dynamo" in str(w.message).lower()]
    for a, b in zip(compiled, eager):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)


def test_broyden_without_a_window_keeps_every_update():
    step, z0, x, _ = mixed_problem(batch=4, dtype=torch.float64)
    f = lambda z: step(z, x)  # noqa: E731
    memory = Broyden()._start(z0)
    assert memory.us.shape == (4, 0, 32)
    z, info = Broyden().solve(f, z0, tol=1e-10, max_iter=100, stop_mode="abs")
    assert info.converged.all()
    torch.testing.assert_close(f(z), z, atol=1e-9, rtol=0)
    with pytest.raises(deqkit.ConfigError, match="or None for no limit"):
        Broyden(m=0)


def test_a_custom_solver_without_a_selectable_state_is_not_compacted_but_still_right():
    class Halfway(Iteration):
        def _start(self, z0):
            return {"steps": 0}  # no select(): the loop keeps the whole batch

        def _update(self, state, z, fz, abs_res):
            state["steps"] += 1
            return 0.5 * (z + fz)

    step, z0, x, rows = mixed_problem(batch=12)
    with torch.no_grad():
        a = deqkit.fixed_point(step, z0, inputs=(x,), solver=Halfway(), tol=1e-6, max_iter=300, stop_mode="abs")
        b = deqkit.fixed_point(lambda z: step(z, x), z0, solver=Halfway(), tol=1e-6, max_iter=300, stop_mode="abs")
    assert_same_solve(a, b)
    assert a[1].converged.all()


def test_compaction_under_bf16_autocast_still_evaluates_subsets():
    step, z0, x, rows = mixed_problem(batch=12)
    rows.clear()
    with torch.no_grad(), torch.autocast("cpu", dtype=torch.bfloat16):
        z, info = deqkit.fixed_point(step, z0, inputs=(x,), solver="anderson", tol=1e-2, max_iter=100)
    assert info.converged.all() and z.dtype == torch.float32
    first_subset = next(i for i, n in enumerate(rows) if n < 12)
    # bf16 step outputs are cast back: no fall-back to whole batches (the last evaluation is the gradient
    # estimator's step from z*, which always sees the whole batch)
    assert max(rows[first_subset:-1]) < 12 and rows[-1] == 12


def test_import_deqkit_does_not_import_torch_dynamo():
    # torch._dynamo takes ~1.4 s to import: deqkit defers it until torch.compile itself has loaded it
    code = "import sys, deqkit, deqkit.backward, deqkit.linear; print('torch._dynamo' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


@pytest.mark.parametrize("solver", [Iteration(), Anderson(), Broyden()], ids=str)
@pytest.mark.parametrize("backward", ["unrolled", Neumann(1)], ids=str)
def test_a_fixed_count_solve_never_synchronises_with_the_host(solver, backward):
    from benchmarks.syncs import counting_syncs, total

    step, z0, x, _ = mixed_problem(batch=6)
    x = x.clone().requires_grad_()
    with counting_syncs() as counter:
        z, info = deqkit.fixed_point(step, z0, inputs=(x,), solver=solver, backward=backward, tol=None, max_iter=7)
        z.sum().backward()
        info.trace, info.residual, info.diverged  # reading the record does not synchronise either
    assert total(counter) == 0, dict(counter)
    assert info.trace.shape == (7, 6) and x.grad is not None


@pytest.mark.parametrize("solver", [Iteration, Anderson, Broyden], ids=lambda s: s.__name__)
def test_check_every_reads_the_host_less_often_and_solves_the_same(solver):
    from benchmarks.syncs import counting_syncs, total

    step, z0, x, _ = mixed_problem(batch=12)
    solves, syncs = {}, {}
    for k in (1, 4):
        with torch.no_grad(), counting_syncs() as counter:
            solves[k] = deqkit.fixed_point(step, z0, inputs=(x,), solver=solver(check_every=k), tol=1e-5,
                                           max_iter=200, stop_mode="abs")
        syncs[k] = total(counter)
    (z1, i1), (z4, i4) = solves[1], solves[4]
    iterations = i1.iterations
    # check_every=1: one read per iteration plus the compaction's choice of rows
    assert iterations <= syncs[1] <= iterations + 6
    assert syncs[4] <= -(-iterations // 4) + 1 + 6 and syncs[4] < syncs[1] / 2
    assert i4.converged.all() and torch.equal(i1.nfe, i4.nfe) and i4.iterations == iterations
    torch.testing.assert_close(z4, z1, rtol=0, atol=1e-5)
    with pytest.raises(deqkit.ConfigError, match="check_every"):
        solver(check_every=0)


def test_a_fixed_count_record_is_computed_when_read_and_refuses_iterates_changed_in_place():
    step, z0, x, _ = mixed_problem(batch=3)
    with torch.no_grad():
        z, info = deqkit.fixed_point(step, z0.clone(), inputs=(x,), solver=Iteration(), backward="unrolled",
                                     tol=None, max_iter=4)
        expected = torch.linalg.vector_norm(step(z, x) - z, dim=1)  # not what the record holds: one step later
        z.mul_(2)  # the returned z is the last iterate: the record would now be wrong
    with pytest.raises(RuntimeError, match="modified in place"):
        info.residual
    with torch.no_grad():
        z, info = deqkit.fixed_point(step, z0, inputs=(x,), solver=Iteration(), backward="unrolled", tol=None, max_iter=4)
    assert info.trace.shape == (4, 3) and not torch.equal(info.residual, expected)
    z.mul_(2)  # once read, the record is kept
    assert info.trace.shape == (4, 3) and repr(info).startswith("SolveInfo(nfe=")
