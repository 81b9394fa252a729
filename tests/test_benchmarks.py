"""The deqkit-vs-torchdeq benchmark scripts run in their quick mode and write the JSON the docs describe."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

pytest.importorskip("torchdeq")

ROOT = Path(__file__).resolve().parents[1]


def run_benchmark(name: str, tmp_path: Path) -> dict:
    out = tmp_path / f"{name}.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run(
        [sys.executable, str(ROOT / "benchmarks" / f"{name}.py"), "--quick", "--json", str(out)],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    payload = json.loads(out.read_text())
    assert payload["benchmark"] == name
    assert {"torch", "torchdeq", "threads"} <= set(payload["environment"])
    assert payload["environment"]["threads"] == 1
    assert payload["provenance"]["versions"]["torch"] == torch.__version__
    return payload["results"]


def test_solvers_reproduce_the_anderson_reference_and_time_the_loop(tmp_path):
    results = run_benchmark("solvers", tmp_path)
    assert {"rows", "mixed", "loop_overhead", "checks"} <= set(results)
    for row in results["rows"] + results["mixed"]:
        assert {"solver", "tol", "stop_mode", "deqkit", "torchdeq", "time_ratio"} <= set(row)
        for side in ("deqkit", "torchdeq"):
            assert {"nfe_mean", "calls", "residual_max", "converged_fraction", "seconds"} <= set(row[side])
            assert row[side]["converged_fraction"] == 1.0
    ref = results["checks"]["reference_gaussian_0.9_tol_1e-5"]
    # the numbers: torchdeq's Anderson takes 27 NFE where plain iteration takes 14
    assert (ref["anderson"]["torchdeq_nfe"], ref["iteration"]["torchdeq_nfe"]) == (27, 14)
    assert ref["anderson"]["deqkit_nfe_max"] <= ref["iteration"]["deqkit_nfe_max"]
    assert results["checks"]["deqkit_anderson_never_more_nfe_than_iteration"]
    easy_hard = [(r["deqkit"]["nfe_easy_mean"], r["deqkit"]["nfe_hard_mean"]) for r in results["mixed"]]
    assert all(easy < hard for easy, hard in easy_hard)
    overhead = results["loop_overhead"][0]
    assert overhead["same_result_as_loop"] and overhead["ratio_deqkit_to_loop"] > 0


def test_peer_checks_pass_for_deqkit(tmp_path):
    results = run_benchmark("peer_checks", tmp_path)
    expected = {"a_unknown_config_keys", "b_gradient_in_eval_mode", "c_double_backward_ift", "d_dict_state",
                "e1_torch_compile", "e2_vmap", "f_anderson_tight_tol", "g_per_sample_convergence"}
    assert set(results) == expected
    for name, result in results.items():
        for side in ("deqkit", "torchdeq"):
            assert result[side]["status"] in {"pass", "partial", "fail", "skipped"} and result[side]["evidence"]
        if name not in {"e1_torch_compile", "e2_vmap"}:
            assert result["deqkit"]["status"] == "pass", (name, result["deqkit"]["evidence"])
    assert results["e1_torch_compile"]["deqkit"]["status"] == "skipped"  # compiling is left to the full run


def test_memory_unrolled_grows_with_iterations_and_implicit_estimators_do_not(tmp_path):
    rows = run_benchmark("memory", tmp_path)["rows"]
    by = {(r["estimator"], r["max_iter"]): r for r in rows}
    assert by[("unrolled", 10)]["deqkit_bytes"] > 1.5 * by[("unrolled", 5)]["deqkit_bytes"]
    assert by[("unrolled", 5)]["torchdeq_bytes"] is None
    for name in ("neumann k=1", "phantom k=5 λ=0.5", "ift"):
        assert by[(name, 5)]["deqkit_bytes"] == by[(name, 10)]["deqkit_bytes"] > 0
        assert by[(name, 10)]["torchdeq_bytes"] > 0


def test_slot_attention_benchmark_merges_runs_and_shows_flat_implicit_memory(tmp_path):
    """Invocations with different --iters / --methods fill one JSON; the implicit module's saved bytes stay flat."""
    out = tmp_path / "slot_attention.json"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}

    def run(*args: str, into: Path = out) -> dict:
        proc = subprocess.run(
            [sys.executable, str(ROOT / "benchmarks" / "slot_attention.py"), "--quick", "--json", str(into),
             "--plots", str(tmp_path), *args], cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return json.loads(into.read_text())

    first = run("--parts", "curves,backward", "--iters", "1")
    run("--parts", "curves", "--iters", "3", "--methods", "vanilla")
    report = run("--parts", "curves", "--iters", "3", "--methods", "implicit")
    # the backward part is kept from the first invocation, so the file keeps that invocation's provenance
    assert isinstance(first["provenance"], dict) and report["provenance"] == first["provenance"]
    runs = report["curves"]["runs"]
    assert {"vanilla/T=1/seed=0", "implicit/T=1/seed=0", "vanilla/T=3/seed=0", "implicit/T=3/seed=0"} <= set(runs)
    for curve in runs.values():
        assert [p["step"] for p in curve] == [10, 20, 30]
        assert all(-1.0 <= p["fg_ari"] <= 1.0 and p["mse"] > 0 for p in curve)
    rows = {(r["method"], r["iters"]): r for r in report["backward"]["rows"]}
    assert rows[("vanilla", 7)]["slot_attention_saved_mb"] > rows[("vanilla", 1)]["slot_attention_saved_mb"]
    assert rows[("implicit", 7)]["slot_attention_saved_mb"] == rows[("implicit", 1)]["slot_attention_saved_mb"]
    assert (tmp_path / "slot_attention_fg_ari_vs_step.png").exists()
    out.write_text(json.dumps({**report, "provenance": None}))  # a part measured before provenance existed
    assert run("--parts", "curves", "--iters", "1")["provenance"] is None
    curves_only = tmp_path / "curves.json"  # a curve run kept from an earlier invocation keeps the file's date
    one = run("--parts", "curves", "--iters", "1", "--methods", "implicit", into=curves_only)
    two = run("--parts", "curves", "--iters", "1", "--methods", "vanilla", into=curves_only)
    assert two["provenance"] == one["provenance"]


def test_a_results_file_is_as_old_as_its_oldest_part():
    from benchmarks.common import merged_provenance

    old = {"provenance": {"commit": "abc", "dirty": False}}
    assert merged_provenance(old, ["curves"]) == old["provenance"]
    assert merged_provenance({"provenance": None}, ["curves"]) is None and merged_provenance(None, ["x"]) is None
    assert merged_provenance(old, [])["time"]  # every part rerun: this process's block


def test_python_m_benchmarks_quick_writes_results_plots_and_the_target_summary(tmp_path):
    """The one command of docs/performance.md in its quick form: JSON per part, two PNGs, one summary table."""
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    proc = subprocess.run([sys.executable, "-m", "benchmarks", "--quick", "--out", str(tmp_path), "--plots", str(tmp_path)],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "performance targets (issues 14 and 23" in proc.stdout
    hot = json.loads((tmp_path / "hot_path.json").read_text())["results"]
    # the hand-written Figure-2 loop and deqkit's Neumann(1) compute the same thing
    assert all(r["same_result"] for r in hot["training_loop"])
    assert hot["slot_attention"]["max_loss_difference"] < 1e-6 and hot["slot_attention"]["ratio"] > 0
    syncs = json.loads((tmp_path / "syncs.json").read_text())["results"]["rows"]
    assert all(r["syncs"] == 0 for r in syncs if r["library"] == "deqkit" and r["check_every"] is None)
    assert all(r["same_z_as_check_every_1"] for r in syncs if r["library"] == "deqkit" and r["check_every"])
    suite = json.loads((tmp_path / "suite.json").read_text())["results"]
    assert {"rows", "verdicts", "compaction", "loop_overhead"} <= set(suite)
    solvers = {(r["library"], r["solver"]) for r in suite["rows"]}
    assert solvers == {(lib, s) for lib in ("deqkit", "torchdeq") for s in ("iteration", "anderson", "broyden")}
    for row in suite["rows"]:
        assert 0.0 <= row["converged_1e-5"] <= row["converged_1e-3"] <= 1.0 and row["seconds"] > 0
    # every library solves the contractive tanh problem; compaction never changes a result
    assert all(r["converged_tol"] == 1.0 for r in suite["rows"] if r["problem"] == "tanh_gaussian_0.9")
    assert all(c["identical"] for c in suite["compaction"])
    grads = json.loads((tmp_path / "gradients.json").read_text())["results"]["problems"]
    tanh = next(p for p in grads if p["problem"] == "tanh_gaussian_0.9")
    by = {r["estimator"]: r for r in tanh["rows"]}
    # against the dense oracle: IFT is exact to the solve's tolerance, Neumann improves with k when ρ < 1
    assert tanh["spectral_radius"]["max"] < 1 and by["ift gmres"]["relative_error"] < 1e-4
    assert by["neumann k=20"]["relative_error"] < by["neumann k=5"]["relative_error"] < by["neumann k=1"]["relative_error"]
    assert (tmp_path / "performance_suite.png").exists() and (tmp_path / "performance_gradients.png").exists()


def test_problem_registry_is_seeded_and_rejects_unknown_names():
    sys.path.insert(0, str(ROOT / "benchmarks"))
    try:
        from problems import PROBLEMS, build
    finally:
        sys.path.remove(str(ROOT / "benchmarks"))
    assert {"tanh_gaussian_0.99", "slot_attention_trained", "sinkhorn_log", "soft_kmeans"} <= set(PROBLEMS)
    a, b = build(["sinkhorn_log", "soft_kmeans"], quick=True), build(["sinkhorn_log", "soft_kmeans"], quick=True)
    for p, q in zip(a, b):
        assert torch.equal(p.z0, q.z0) and torch.equal(p.f(p.z0), q.f(q.z0))
    with pytest.raises(SystemExit, match="unknown problem"):
        build(["nope"])


def test_every_results_file_written_by_write_json_carries_its_provenance(tmp_path):
    from benchmarks.common import write_json
    from deqkit.provenance import git_state

    write_json(tmp_path / "r.json", "demo", {"n": 1}, {"value": 0.5}, code=["examples/toy_deq"])
    payload = json.loads((tmp_path / "r.json").read_text())
    assert payload["results"] == {"value": 0.5}
    assert payload["provenance"]["commit"] == git_state()["commit"]
    assert {"versions", "argv", "torch_threads", "time"} <= set(payload["provenance"])
    # what the numbers depend on: deqkit, the writer, the calling script and the named paths
    assert payload["code"] == ["benchmarks/common.py", "deqkit", "examples/toy_deq", "tests/test_benchmarks.py"]
