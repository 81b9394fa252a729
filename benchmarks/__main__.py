"""One command for the performance benchmarks: ``python -m benchmarks [--quick] [--only suite,hot_path,...]``.

Runs ``suite.py`` (every solver of deqkit and torchdeq on the problems of ``problems.py``, compaction, loop
overhead), ``hot_path.py`` (a Neumann(1) training loop and the slot attention training step against the
hand-written Figure-2 loop), ``syncs.py`` (host synchronisations per solve), ``gradients.py`` (estimators
against the dense IFT oracle) and ``torch_compile.py`` (the compiled slot attention training step) in one
process on one thread, prints one summary table of the targets (met or not, with the numbers, torchdeq's
beside), writes ``<out>/suite.json``, ``hot_path.json``, ``syncs.json``, ``gradients.json``,
``torch_compile.json`` and PNG plots into ``<plots>``. The full run takes about 10 minutes on one quiet core;
``--quick`` takes seconds (small problems, no torch.compile) and is what tests/test_benchmarks.py runs.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))  # the benchmark scripts import each other by bare name
sys.path.insert(0, str(HERE.parent))  # and the repository root (applications/)

PARTS = ("suite", "hot_path", "syncs", "gradients", "compile")


def summary(results: dict) -> list[list]:
    """Rows ``[target, deqkit measured, torchdeq, met]`` of the targets from whatever parts ran."""
    rows = []
    suite = results.get("suite")
    if suite:
        verdicts = suite["verdicts"]
        met = sum(v["met"] for v in verdicts)
        rows.append(["best deqkit solver: ≥ torchdeq's samples within tol, ≤ 0.8× its time",
                     f"{met}/{len(verdicts)} problem×tol rows; samples ≥ on {sum(v['as_many_samples'] for v in verdicts)}, "
                     f"time ratio {min(v['time_ratio'] for v in verdicts):.2f}–{max(v['time_ratio'] for v in verdicts):.2f}",
                     "its best solver = 1", met == len(verdicts)])
        trained = [r for r in suite["rows"] if r["problem"] == "slot_attention_trained" and r["tol"] == 1e-3]
        if trained:
            top = max((r for r in trained if r["library"] == "deqkit"), key=lambda r: r["converged_1e-3"])
            peer = max((r for r in trained if r["library"] == "torchdeq"), key=lambda r: r["converged_1e-3"])
            rows.append(["trained slot attention: ≥ 99 % of samples to rel 1e-3",
                         f"{100 * top['converged_1e-3']:.1f} % with {top['solver']}",
                         f"{100 * peer['converged_1e-3']:.1f} % with {peer['solver']}", top["converged_1e-3"] >= 0.99])
        broyden = [(r, t) for r in suite["rows"] for t in suite["rows"]
                   if r["problem"].startswith("tanh") and r["problem"] == t["problem"] and r["tol"] == t["tol"]
                   and r["solver"] == t["solver"] == "broyden" and r["library"] == "deqkit" and t["library"] == "torchdeq"]
        if broyden:
            worse = [(r["problem"], r["tol"]) for r, t in broyden if r["nfe_max"] > t["calls"]]
            rows.append(["Broyden NFE ≤ torchdeq's Broyden on the tanh rows",
                         f"max NFE ≤ on {len(broyden) - len(worse)}/{len(broyden)} rows", "-", not worse])
        mixed = [c for c in suite["compaction"] if c["case"] == "mixed"]
        early = [c for c in suite["compaction"] if c["case"] == "no_early_stop"]
        rows.append(["compaction, mixed batch: time ≤ 0.6× of the whole-batch solve",
                     ", ".join(f"{c['problem'].split('_')[0]}/{c['solver']} {c['ratio']:.2f}" for c in mixed),
                     "no compaction (1.0)", all(c["ratio"] <= 0.6 for c in mixed)])
        rows.append(["compaction, no early stop: overhead ≤ 5 %",
                     ", ".join(f"{c['problem'].split('_')[0]}/{c['solver']} {c['ratio']:.2f}" for c in early), "-",
                     all(c["ratio"] <= 1.05 for c in early)])
        rows.append(["compaction gives identical results (torch.equal)",
                     f"{sum(c['identical'] for c in suite['compaction'])}/{len(suite['compaction'])} solves", "-",
                     all(c["identical"] for c in suite["compaction"])])
    # the hot_path part measures the loop with more repeats: its numbers replace the suite's when it ran
    for o in (results.get("hot_path") or results.get("suite") or {}).get("loop_overhead", []):
        limit = 1.1 if o["batch"] == 64 else 1.3
        simple = o["ratio_torchdeq_simple_to_loop"]
        rows.append([f"tol=None loop ≤ {limit}× a bare loop at {o['batch']}×{o['width']}, and ≤ torchdeq's simplest",
                     f"{o['ratio_deqkit_to_loop']:.2f}× (median {o['median_ratio_deqkit_to_loop']:.2f}×; "
                     f"info read {o['ratio_deqkit_info_read_to_loop']:.2f}×)",
                     f"simple_fixed_point_iter {simple:.2f}×, fixed_point_iter "
                     f"{o['ratio_torchdeq_fixed_point_iter_to_loop']:.2f}×",
                     o["ratio_deqkit_to_loop"] <= limit and o["ratio_deqkit_to_loop"] <= simple])
    hot = results.get("hot_path")
    if hot:
        for r in hot["training_loop"]:
            rows.append([f"Neumann(1) training loop (T={r['iterations']} + 1) ≤ the Figure-2 loop by hand, "
                         f"{r['batch']}×{r['width']}", f"{r['ratio']:.2f}× (median {r['median_ratio']:.2f}×)", "-",
                         None])
        sa = hot["slot_attention"]
        rows.append([f"slot attention training step ({sa['preset']} preset) ≤ 1.05× the Figure-2 loop by hand",
                     f"{sa['ratio']:.2f}× (median {sa['median_ratio']:.2f}×), loss Δ {sa['max_loss_difference']:.1e}",
                     "-", sa["ratio"] <= 1.05])
        c = hot.get("compaction_floor")
        if c:
            rows.append([f"compaction of a mixed batch ({c['running']}/{c['batch']} running, tanh): where the time goes",
                         f"compacted {c['ratio_compacted']:.2f}× of whole batch; running samples alone "
                         f"{c['ratio_floor']:.2f}× (the floor)", "-", None])
    syncs = results.get("syncs")
    if syncs:
        mine = [r for r in syncs["rows"] if r["library"] == "deqkit"]
        peer = [r for r in syncs["rows"] if r["library"] == "torchdeq"]
        fixed = [r for r in mine if r["check_every"] is None]
        rows.append(["fixed-count solve: no host synchronisation",
                     f"{max(r['syncs'] for r in fixed)} syncs/solve ({len(fixed)} solvers)",
                     ", ".join(f"{r['solver']} {r['syncs']}" for r in peer if r["mode"].startswith("tol=None")),
                     all(r["syncs"] == 0 for r in fixed)])
        per = {k: [r["syncs_per_iteration"] for r in mine if r["check_every"] == k] for k in (1, 4, 8)}
        rows.append(["tolerance solve: syncs per iteration with check_every=1 / 4 / 8",
                     " / ".join(f"{max(v):.2f}" for v in per.values() if v),
                     ", ".join(f"{r['solver']} {r['syncs_per_iteration']:.2f}" for r in peer if not r["mode"].startswith("tol=None")),
                     None])
    compiled = results.get("compile")
    if compiled:
        from torch_compile import visible

        for r in compiled["rows"]:
            shown = visible(r["warnings"])
            rows.append([f"torch.compile fullgraph, {r['name']}: 1 graph, no warnings",
                         f"{r['graphs']} graph(s), {r['graph_breaks']} breaks, {len(shown)} warnings "
                         f"(+{len(r['warnings']) - len(shown)} DeprecationWarnings hidden by default filters)", "-",
                         r["graphs"] == 1 and r["graph_breaks"] == 0 and not shown])
            speedup = r.get("best_speedup", r["speedup"])
            rows.append([f"torch.compile of the training step at least as fast as eager, {r['name']}",
                         f"{speedup:.2f}× ({r['backend']}{', ' + r['mode'] if r.get('mode') else ''}, "
                         f"{r.get('device', 'cpu')}, best of {r['steps']} interleaved steps; median {r['speedup']:.2f}×)",
                         "-", speedup >= 1.0])
        for r in compiled.get("fixed_count_loop", []):
            rows.append([f"torch.compile of a fixed-count tanh DEQ step (30 + Neumann(1)), {r['batch']}×{r['width']}",
                         f"{r['best_speedup']:.2f}× ({r['backend']}, {r['device']}, best of interleaved steps)", "-",
                         r["best_speedup"] >= 1.0])
    grads = results.get("gradients")
    if grads:
        for prob in grads["problems"]:
            if prob["rows"]:
                best = min(prob["rows"], key=lambda r: r["relative_error"])
                cheap = min((r for r in prob["rows"] if r["relative_error"] < 0.05), key=lambda r: r["seconds"], default=None)
                rows.append([f"gradient, {prob['problem']} (ρ {prob['spectral_radius']['max']:.2f})",
                             f"most accurate {best['estimator']} ({best['relative_error']:.1e}); cheapest < 5 % error: "
                             f"{cheap['estimator'] if cheap else 'none'}", "-", None])
    return rows


def without_config(result: dict) -> dict:
    return {k: v for k, v in result.items() if k != "config"}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small problems, no torch.compile: seconds (used by the tests)")
    p.add_argument("--only", default=",".join(PARTS), help=f"comma-separated parts of {', '.join(PARTS)}")
    p.add_argument("--out", type=Path, default=HERE / "results", help="directory for the JSON results")
    p.add_argument("--plots", type=Path, default=HERE.parent / "docs", help="directory for the PNG plots")
    args = p.parse_args()
    parts = [s.strip() for s in args.only.split(",") if s.strip()]
    unknown = sorted(set(parts) - set(PARTS))
    if unknown:
        p.error(f"unknown part(s) {', '.join(unknown)}; choose from {', '.join(PARTS)}")

    import torch

    torch.set_num_threads(1)
    from common import print_table, write_json

    import perf_plots as plots

    results = {}
    if "suite" in parts:
        import suite

        results["suite"] = suite.run(args.quick)
        suite.report(results["suite"])
        write_json(args.out / "suite.json", "suite", results["suite"]["config"], without_config(results["suite"]))
        plots.suite_plot(results["suite"], args.plots / "performance_suite.png")
    if "hot_path" in parts:
        import hot_path

        results["hot_path"] = hot_path.run(args.quick)
        hot_path.report(results["hot_path"])
        write_json(args.out / "hot_path.json", "hot_path", results["hot_path"]["config"], without_config(results["hot_path"]))
    if "syncs" in parts:
        import syncs

        results["syncs"] = {"config": {"quick": args.quick}, "rows": syncs.measure(args.quick)}
        syncs.report(results["syncs"]["rows"])
        write_json(args.out / "syncs.json", "syncs", results["syncs"]["config"], without_config(results["syncs"]))
    if "gradients" in parts:
        import gradients

        results["gradients"] = gradients.run(args.quick)
        gradients.report(results["gradients"])
        write_json(args.out / "gradients.json", "gradients", results["gradients"]["config"], without_config(results["gradients"]))
        plots.gradients_plot(results["gradients"], args.plots / "performance_gradients.png")
    if "compile" in parts and not args.quick:  # compiling takes minutes; tests/test_performance.py covers it
        import torch_compile

        try:
            results["compile"] = torch_compile.run(args.quick)
        except Exception as err:  # still print the summary of the parts that ran
            print(f"torch_compile failed: {type(err).__name__}: {str(err).splitlines()[0][:300]}")
        else:
            torch_compile.report(results["compile"])
            torch_compile.report_loops(results["compile"])
            write_json(args.out / "torch_compile.json", "torch_compile", results["compile"]["config"],
                       without_config(results["compile"]))
    earlier = []
    if not args.quick:  # parts not run this time: their results from an earlier run, said so in the title
        import json

        for part, name in (("suite", "suite"), ("hot_path", "hot_path"), ("syncs", "syncs"), ("gradients", "gradients"),
                           ("compile", "torch_compile")):
            path = args.out / f"{name}.json"
            if part not in results and path.exists():
                results[part] = json.loads(path.read_text())["results"]
                earlier.append(name)
    print_table("performance targets (issues 14 and 23; ratios are best of interleaved repeats"
                + (f"; from earlier runs: {', '.join(earlier)}" if earlier else "") + ")",
                ["target", "deqkit", "torchdeq", "met"], summary(results))


if __name__ == "__main__":
    main()
