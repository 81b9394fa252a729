"""One check per known weakness of torchdeq, run on deqkit and torchdeq side by side.

(a) unknown config keys, (b) gradients under eval mode, (c) double backward through the implicit gradient,
(d) dict states, (e) torch.compile and torch.func.vmap over a solve, (f) Anderson at a tight tolerance,
(g) per-sample convergence in a mixed batch. Gradients are compared with a dense implicit-function-theorem
oracle in float64 (and its central finite difference for second derivatives). Each library gets a status
(pass / partial / fail) and the number or message that shows it.

    PYTHONPATH=. python benchmarks/peer_checks.py            # ~1 min (torch.compile dominates)
    PYTHONPATH=. python benchmarks/peer_checks.py --quick    # skips torch.compile, a few seconds
"""

from __future__ import annotations

import time
import warnings
from typing import Callable

import torch
import torchdeq
from common import RESULTS, TanhDEQ, parser, print_table, tanh_problem, write_json
from solvers import compare, mixed_batch
from torchdeq.solver import get_solver

import deqkit
from deqkit.backward import IFT

TIGHT = 1e-11  # float64 tolerance for solves compared with the oracle
GRAD_TOL = 1e-6  # relative error below which a gradient counts as correct


def small(seed: int = 0, batch: int = 3, width: int = 6) -> TanhDEQ:
    """A float64 tanh DEQ (‖W‖₂ = 0.7) small enough for dense Jacobians, with x requiring grad."""
    p = tanh_problem("gaussian", 0.7, batch, width, seed=seed, dtype=torch.float64)
    p.x.requires_grad_()
    return p


def step(z: torch.Tensor, x: torch.Tensor, p: TanhDEQ) -> torch.Tensor:
    return torch.tanh(z @ p.W.T + x @ p.U.T)


def exact_fixed_point(p: TanhDEQ, x: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        z = torch.zeros_like(x)
        for _ in range(400):  # 0.7^400: exact to machine precision
            z = step(z, x, p)
    return z


def oracle_grad_x(p: TanhDEQ, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
    """dℓ/dx for ℓ = Σ c ⊙ z*(x): per sample Uᵀ diag(s) (I − diag(s) W)⁻ᵀ c, s = 1 − z*²."""
    z = exact_fixed_point(p, x.detach())
    s = 1 - z**2  # [B, D]
    eye = torch.eye(z.shape[1], dtype=z.dtype)
    jac = s[:, :, None] * p.W[None]  # J_b = diag(s_b) W
    g = torch.linalg.solve((eye - jac).transpose(1, 2), c[:, :, None]).squeeze(2)
    return (s * g) @ p.U


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    return float(torch.linalg.vector_norm(a - b) / torch.linalg.vector_norm(b))


def error_text(e: BaseException) -> str:
    lines = str(e).strip().splitlines()
    return f"{type(e).__name__}: {lines[0][:160] if lines else ''}".rstrip(": ")


def attempt(fn: Callable[[], dict]) -> dict:
    """Run one library's side of a check; an unexpected exception is a failure with its message as evidence."""
    try:
        return fn()
    except Exception as e:  # noqa: BLE001 - the point is to record what the library does
        return {"status": "fail", "evidence": error_text(e)}


def check_unknown_keys() -> dict:
    def dk() -> dict:
        try:
            deqkit.FixedPoint(lambda z: z, tol_typo=1e-9)
        except deqkit.ConfigError as e:
            return {"status": "pass", "evidence": f"ConfigError: {e}"}
        return {"status": "fail", "evidence": "accepted tol_typo silently"}

    def td() -> dict:
        deq = torchdeq.get_deq({"f_solver": "anderson", "f_tol_typo": 1e-9})
        return {"status": "fail", "evidence": f"accepted f_tol_typo silently; f_tol stays {deq.f_tol:g}"}

    return {"deqkit": attempt(dk), "torchdeq": attempt(td)}


def check_eval_mode_gradient() -> dict:
    p = small()
    c = torch.randn(p.x.shape, generator=torch.Generator().manual_seed(5), dtype=torch.float64)
    oracle = oracle_grad_x(p, p.x, c)
    z0 = torch.zeros_like(p.x)

    def dk() -> dict:
        fp = deqkit.FixedPoint(lambda z, x: step(z, x, p), tol=TIGHT, max_iter=200, stop_mode="abs", backward=IFT(tol=TIGHT))
        fp.eval()
        with torch.enable_grad():
            z, _ = fp(z0, p.x)
        err = rel_err(torch.autograd.grad((c * z).sum(), p.x)[0], oracle)
        with torch.no_grad():
            no_graph = not fp(z0, p.x)[0].requires_grad
        ok = err < GRAD_TOL and no_graph
        return {"status": "pass" if ok else "fail", "evidence": f"eval + enable_grad: rel err {err:.1e} vs oracle; no_grad records no graph: {no_graph}"}

    def td() -> dict:
        deq = torchdeq.get_deq(f_solver="anderson", f_tol=TIGHT, f_max_iter=200, ift=True, b_tol=TIGHT, b_max_iter=200)
        deq.train()
        z = deq(lambda z: step(z, p.x, p), z0)[0][-1]
        train_err = rel_err(torch.autograd.grad((c * z).sum(), p.x)[0], oracle)
        deq.eval()
        with torch.enable_grad():
            z = deq(lambda z: step(z, p.x, p), z0)[0][-1]
        if not z.requires_grad:
            return {"status": "fail", "evidence": f"eval + enable_grad: output has no graph, no gradient (train mode: rel err {train_err:.1e})"}
        err = rel_err(torch.autograd.grad((c * z).sum(), p.x)[0], oracle)
        return {"status": "pass" if err < GRAD_TOL else "fail", "evidence": f"eval + enable_grad: rel err {err:.1e}"}

    return {"deqkit": attempt(dk), "torchdeq": attempt(td)}


def check_double_backward() -> dict:
    """Hessian-vector product d/dx ⟨dℓ/dx, v⟩ against a central difference of the oracle gradient."""
    p = small(seed=1)
    gen = torch.Generator().manual_seed(6)
    c = torch.randn(p.x.shape, generator=gen, dtype=torch.float64)
    v = torch.randn(p.x.shape, generator=gen, dtype=torch.float64)
    eps = 1e-5
    x = p.x.detach()
    oracle = (oracle_grad_x(p, x + eps * v, c) - oracle_grad_x(p, x - eps * v, c)) / (2 * eps)
    z0 = torch.zeros_like(x)

    def hvp(z: torch.Tensor) -> torch.Tensor:
        (g,) = torch.autograd.grad((c * z).sum(), p.x, create_graph=True)
        return torch.autograd.grad((g * v).sum(), p.x)[0]

    def dk() -> dict:
        z, _ = deqkit.fixed_point(lambda z: step(z, p.x, p), z0, tol=TIGHT, max_iter=200, stop_mode="abs", backward=IFT(tol=TIGHT))
        try:
            hvp(z)
        except RuntimeError as e:
            unrolled, _ = deqkit.fixed_point(lambda z: step(z, p.x, p), z0, solver="iteration", tol=None, max_iter=150, backward="unrolled")
            err = rel_err(hvp(unrolled), oracle)
            return {"status": "pass", "evidence": f"IFT raises ({error_text(e)[:90]}...); Unrolled HVP rel err {err:.1e}"}
        return {"status": "fail", "evidence": "IFT double backward returned without error"}

    def td() -> dict:
        deq = torchdeq.get_deq(f_solver="anderson", f_tol=TIGHT, f_max_iter=200, ift=True, b_tol=TIGHT, b_max_iter=200)
        z = deq(lambda z: step(z, p.x, p), z0)[0][-1]
        err = rel_err(hvp(z), oracle)
        status = "pass" if err < 1e-4 else "fail"
        return {"status": status, "evidence": f"returns a Hessian-vector product silently; rel err {err:.2f} vs finite differences"}

    return {"deqkit": attempt(dk), "torchdeq": attempt(td)}


def check_dict_state() -> dict:
    p = small(seed=2)
    V = 0.3 * torch.randn(2, p.x.shape[1], generator=torch.Generator().manual_seed(7), dtype=torch.float64)

    def f(s: dict) -> dict:  # two coupled blocks of different shapes
        return {"a": torch.tanh(s["a"] @ p.W.T + p.x.detach() @ p.U.T + s["b"] @ V), "b": 0.5 * torch.tanh(s["a"][:, :2])}

    s0 = {"a": torch.zeros_like(p.x.detach()), "b": torch.zeros(p.x.shape[0], 2, dtype=torch.float64)}

    def residual(s: dict) -> float:
        fs = f(s)
        return max(float(torch.linalg.vector_norm(fs[k] - s[k], dim=1).max()) for k in s)

    def dk() -> dict:
        with torch.no_grad():
            s, _ = deqkit.fixed_point(f, s0, tol=1e-10, max_iter=200, stop_mode="abs")
            res = residual(s)
        ok = isinstance(s, dict) and res <= 1e-10
        return {"status": "pass" if ok else "fail", "evidence": f"returns a dict; max ‖f(s)−s‖ = {res:.1e}"}

    def td() -> dict:
        try:
            torchdeq.get_deq(f_solver="anderson")(f, s0)
            return {"status": "pass", "evidence": "DEQ accepted a dict"}
        except Exception as e:  # noqa: BLE001
            deq_error = error_text(e) or type(e).__name__
        try:
            get_solver("anderson")(f, s0)
            solver_error = "none"
        except Exception as e:  # noqa: BLE001
            solver_error = error_text(e)
        return {"status": "fail", "evidence": f"get_deq: {deq_error or 'AssertionError'}; anderson_solver: {solver_error}"}

    return {"deqkit": attempt(dk), "torchdeq": attempt(td)}


def check_compile(backend: str) -> dict:
    """torch.compile over a solve plus its IFT backward; forward and x-gradient checked against the oracle."""
    p = small(seed=3, batch=4, width=16)
    c = torch.randn(p.x.shape, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    z_ref, g_ref = exact_fixed_point(p, p.x.detach()), oracle_grad_x(p, p.x, c)
    z0 = torch.zeros_like(p.x.detach())

    def judge(run: Callable[[torch.Tensor], torch.Tensor]) -> dict:
        torch._dynamo.reset()
        torch._dynamo.utils.counters.clear()
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            z = torch.compile(run, backend=backend)(z0)
            g = torch.autograd.grad((c * z).sum(), p.x)[0]
        seconds = time.perf_counter() - start
        breaks = sum(torch._dynamo.utils.counters["graph_break"].values())
        z_err, g_err = rel_err(z.detach(), z_ref), rel_err(g, g_ref)
        ok = z_err < 1e-6 and g_err < 1e-5
        return {
            "status": "pass" if ok else "fail",
            "evidence": f"{backend}: z rel err {z_err:.1e}, grad rel err {g_err:.1e}, {breaks} graph breaks, {seconds:.0f} s incl. compiling",
        }

    def dk() -> dict:
        return judge(lambda z0: deqkit.fixed_point(lambda z: step(z, p.x, p), z0, tol=1e-9, max_iter=100, stop_mode="abs", backward=IFT(tol=1e-10))[0])

    def td() -> dict:
        deq = torchdeq.get_deq(f_solver="anderson", f_tol=1e-9, f_max_iter=100, ift=True, b_tol=1e-10, b_max_iter=100)
        return judge(lambda z0: deq(lambda z: step(z, p.x, p), z0)[0][-1])

    return {"deqkit": attempt(dk), "torchdeq": attempt(td)}


def check_vmap() -> dict:
    """vmap over 3 independent problems (x stacked [3, B, D]) against solving them one by one."""
    p = small(seed=4, batch=4, width=16)
    xs = torch.randn(3, *p.x.shape, generator=torch.Generator().manual_seed(9), dtype=torch.float64)
    ref = torch.stack([exact_fixed_point(p, x) for x in xs])

    def trial(label: str, solve: Callable[[torch.Tensor], torch.Tensor], grad: bool) -> tuple[bool, str]:
        try:
            with torch.set_grad_enabled(grad):
                out = torch.func.vmap(solve)(xs)
        except Exception as e:  # noqa: BLE001
            return False, f"{label}: {error_text(e)[:70]}"
        err = rel_err(out.detach(), ref)
        return err < 1e-6, f"{label}: ok, rel err {err:.0e}"

    def summarize(trials: list[tuple[bool, str]]) -> dict:
        passed = sum(ok for ok, _ in trials)
        status = "pass" if passed == len(trials) else "partial" if passed else "fail"
        return {"status": status, "evidence": " | ".join(text for _, text in trials), "trials_passed": passed, "trials": len(trials)}

    def dk_solve(tol, backward: str = "ift"):
        return lambda x: deqkit.fixed_point(lambda z: step(z, x, p), torch.zeros_like(x), solver="anderson", tol=tol, max_iter=60, stop_mode="abs", backward=backward)[0]

    def td_solve(name: str, **kw):
        return lambda x: get_solver(name)(lambda z, tau=1.0: step(z, x, p), torch.zeros_like(x), max_iter=60, **kw)[0]

    def dk() -> dict:
        return summarize([
            trial("tol=1e-9", dk_solve(1e-9), False),
            trial("tol=None no_grad", dk_solve(None), False),
            trial("tol=None grad IFT", dk_solve(None), True),
            trial("tol=None grad Neumann", dk_solve(None, "neumann"), True),
        ])

    def td() -> dict:
        return summarize([
            trial("anderson tol=1e-9", td_solve("anderson", tol=1e-9), False),
            trial("fixed_point_iter tol=1e-9", td_solve("fixed_point_iter", tol=1e-9), False),
            trial("simple_fixed_point_iter", td_solve("simple_fixed_point_iter"), False),
            trial("broyden tol=1e-9", td_solve("broyden", tol=1e-9), False),
        ])

    return {"deqkit": attempt(dk), "torchdeq": attempt(td)}


def check_anderson_tight() -> dict:
    """Gaussian ‖W‖₂ = 0.9, B = 64, D = 256, tol 1e-5 abs: Anderson should not need more NFE than iteration."""
    p = tanh_problem("gaussian", 0.9, 64, 256)
    z0 = torch.zeros(64, 256)
    it = compare(p, "iteration", z0, 1e-5, "abs", 100, repeats=1)
    aa = compare(p, "anderson", z0, 1e-5, "abs", 100, repeats=1)

    def side(lib: str) -> dict:
        a, i = aa[lib]["nfe_max"], it[lib]["nfe_max"]
        return {"status": "pass" if a <= i else "fail", "evidence": f"Anderson {a} NFE vs iteration {i} (slowest sample)"}

    return {"deqkit": side("deqkit"), "torchdeq": side("torchdeq")}


def check_per_sample() -> dict:
    """Mixed batch: half warm-started 1e-3 from the solution; easy samples should stop early."""
    row = next(r for r in mixed_batch(64, 256, 1e-5, 100, repeats=1) if r["solver"] == "anderson")

    def side(lib: str) -> dict:
        easy, hard = row[lib]["nfe_easy_mean"], row[lib]["nfe_hard_mean"]
        return {"status": "pass" if easy <= 0.5 * hard else "fail", "evidence": f"easy samples {easy:.1f} NFE, hard {hard:.1f} (Anderson)"}

    return {"deqkit": side("deqkit"), "torchdeq": side("torchdeq")}


def main() -> None:
    p = parser(__doc__, RESULTS / "peer_checks.json")
    p.add_argument("--compile-backend", default="inductor", help="torch.compile backend for check (e)")
    args = p.parse_args()
    torch.set_num_threads(1)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    checks = {
        "a_unknown_config_keys": check_unknown_keys,
        "b_gradient_in_eval_mode": check_eval_mode_gradient,
        "c_double_backward_ift": check_double_backward,
        "d_dict_state": check_dict_state,
        "e1_torch_compile": lambda: check_compile(args.compile_backend),
        "e2_vmap": check_vmap,
        "f_anderson_tight_tol": check_anderson_tight,
        "g_per_sample_convergence": check_per_sample,
    }
    results = {}
    for name, check in checks.items():
        if args.quick and name == "e1_torch_compile":
            skipped = {"status": "skipped", "evidence": "--quick"}
            results[name] = {"deqkit": skipped, "torchdeq": skipped}
            continue
        start = time.perf_counter()
        results[name] = check()
        results[name]["seconds"] = time.perf_counter() - start
    print_table(
        "known torchdeq weaknesses, checked on both libraries",
        ["check", "deqkit", "deqkit evidence", "torchdeq", "torchdeq evidence"],
        [[k, r["deqkit"]["status"], r["deqkit"]["evidence"], r["torchdeq"]["status"], r["torchdeq"]["evidence"]] for k, r in results.items()],
    )
    write_json(args.json, "peer_checks", {"quick": args.quick, "compile_backend": args.compile_backend}, results)


if __name__ == "__main__":
    main()
