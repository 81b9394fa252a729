"""The seed paper's claims on one page: ``python -m benchmarks.claims [--quick] [--check]`` writes docs/claims.md.

Each claim of Chang, Griffiths & Levine, "Object Representations as Fixed Points" (NeurIPS 2022) and of the
interaction-asymmetry abstract (Brady et al. 2024) is a :class:`Claim`: the paper's statement (a constant
here, with its table or figure), the results files that measure it at CPU scale, a function that reads
them into deqkit's number and a verdict, and the commands that produce the files. Nothing on the page is
typed by hand: rerun the commands, then this module, and the page follows. The verdict rule is
``benchmarks.common.beyond_spread`` (the one ``benchmarks/slate.py report`` uses): a gap within the sum of
the two standard deviations is "no difference beyond the spread"; an arm with one seed has no spread, so
its verdict is "not conclusive (1 seed)".

``--check`` regenerates the page in memory and fails (exit 1) if docs/claims.md differs from it, so the page
cannot go stale silently. ``--quick`` is accepted for the shared benchmark interface; reading the results
takes about a second either way (nothing is trained here).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Sequence

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from benchmarks.common import beyond_spread, mean_sd  # noqa: E402
from benchmarks.score_runs import seed_groups  # noqa: E402

RESULTS = "benchmarks/results"
PAGE = ROOT / "docs" / "claims.md"
EVAL_FIX = "3703465"  # the last commit whose evaluation scored implicit models one update short (docs/core.md)
VERDICTS = ("holds", "reversed", "no difference beyond the spread", "not conclusive", "not testable here",
            "not measured yet")


@dataclass(frozen=True)
class Measured:
    """deqkit's number for one claim, formatted, and its verdict (one of ``VERDICTS``, maybe with a note)."""

    deqkit: str
    verdict: str
    why: str = ""


@dataclass(frozen=True)
class Claim:
    """One row of the page. ``paper`` is the paper's number or statement, typed from the paper (``source``);
    ``measure`` reads ``files`` (names in benchmarks/results/) into a :class:`Measured`."""

    id: str
    source: str
    claim: str
    paper: str
    files: tuple[str, ...]
    measure: Callable[["Results"], Measured]
    commands: tuple[str, ...]
    implicit_metrics: bool = False  # deqkit's number includes evaluation metrics of implicit models
    gpu: tuple[str, ...] = ()  # the same experiment at the paper's scale, "for a GPU"


class Results:
    """The results files, read once; ``root`` is the repository."""

    def __init__(self, root: Path = ROOT) -> None:
        self.root = root
        self._cache: dict[str, Any] = {}

    def __call__(self, name: str) -> Any:
        if name not in self._cache:
            self._cache[name] = json.loads((self.root / RESULTS / name).read_text(encoding="utf-8"))
        return self._cache[name]

    def commit(self, name: str) -> str | None:
        block = self(name).get("provenance") if isinstance(self(name), dict) else None
        return block.get("commit") if isinstance(block, dict) else None

    def provenance(self, name: str) -> str:
        commit = self.commit(name)
        return f"commit {commit[:12]}" if commit else "no provenance (written before provenance existed)"

    def before_eval_fix(self, name: str) -> bool:
        """Whether the file was written at or before the evaluation fix (no provenance counts as before)."""
        commit = self.commit(name)
        if not commit:
            return True
        try:
            done = subprocess.run(["git", "merge-base", "--is-ancestor", commit, EVAL_FIX], cwd=self.root,
                                  capture_output=True, timeout=30, check=False)
        except (OSError, subprocess.SubprocessError):
            return True
        return done.returncode != 1


# ------------------------------------------------------------------------------------------ formatting


def show(group: dict[str, Any], digits: int = 3) -> str:
    """``0.731 ± 0.025 (3 seeds)`` or ``0.731 (1 seed)``."""
    n = len(group["values"])
    if n == 1:
        return f"{group['mean']:.{digits}f} (1 seed)"
    return f"{group['mean']:.{digits}f} ± {group['sd']:.{digits}f} ({n} seeds)"


def compare(implicit: Sequence[float], vanilla: Sequence[float], paper_favours: str, digits: int = 3,
            names: tuple[str, str] = ("implicit", "vanilla")) -> Measured:
    """The seed-spread verdict for a claim that implicit's value is ``lower`` or ``higher`` than vanilla's."""
    a, b = mean_sd(vanilla), mean_sd(implicit)
    text = f"{names[0]} {show(b, digits)} vs {names[1]} {show(a, digits)}"
    if min(len(a["values"]), len(b["values"])) < 2:
        return Measured(text, "not conclusive (1 seed)")
    gap = beyond_spread(a, b)
    text += f"; gap {gap['difference']:+.{digits}f}, spread {gap['spread']:.{digits}f}"
    if not gap["beyond"]:
        return Measured(text, "no difference beyond the spread")
    favoured = gap["difference"] < 0 if paper_favours == "lower" else gap["difference"] > 0
    return Measured(text, "holds" if favoured else "reversed")


def grows_vs_flat(unrolled: Sequence[tuple[int, float]], implicit: Sequence[tuple[int, float]], unit: str,
                  digits: int) -> Measured:
    """Table 1's claim: unrolled's cost grows with the iterations, implicit's does not. Implicit's range over
    the iteration counts is the spread (timing noise; 0 for memory); unrolled's growth from the fewest to the
    most iterations must exceed it."""
    its = [i for i, _ in unrolled]
    spread = max(v for _, v in implicit) - min(v for _, v in implicit)
    growth = unrolled[-1][1] - unrolled[0][1]
    low, high = min(v for _, v in implicit), max(v for _, v in implicit)
    flat = f"{low:.{digits}f} {unit} at every count" if spread == 0 else f"{low:.{digits}f}–{high:.{digits}f} {unit}"
    how = "exact bytes" if spread == 0 else "one median per count"
    text = (f"{its[0]}→{its[-1]} iterations: unrolled {unrolled[0][1]:.{digits}f}→{unrolled[-1][1]:.{digits}f} "
            f"{unit}, implicit {flat} ({how})")
    return Measured(text, "holds" if growth > spread else "no difference beyond the spread")


def combine(parts: Sequence[tuple[str, str]]) -> str:
    """One verdict for a claim measured in parts (``(where, verdict)``): the common verdict, else each verdict
    with where it applies, the decisive ones first, so the text still starts with a verdict word."""
    by: dict[str, list[str]] = {}
    for where, verdict in parts:
        by.setdefault(verdict, []).append(where)
    if len(by) == 1:
        return next(iter(by))
    order = sorted(by, key=lambda v: next((i for i, w in enumerate(VERDICTS) if v.startswith(w)), len(VERDICTS)))
    return "; ".join(f"{v} {', '.join(by[v])}" for v in order)


def last_point(curve: list[dict[str, Any]], metric: str) -> float:
    return curve[-1][metric]


def spectral_mean(series: list, from_step: int) -> float:
    """Mean of a run's logged ‖J‖ (``[step, value]`` pairs) from ``from_step`` on."""
    values = [v for step, v in series if step >= from_step and v is not None]
    return sum(values) / len(values)


# ------------------------------------------------------------------------------------------ measures


def memory_core(r: Results) -> Measured:
    rows = r("memory.json")["results"]["rows"]
    unrolled = [(x["max_iter"], x["deqkit_bytes"] / 2**20) for x in rows if x["estimator"] == "unrolled"]
    implicit = [(x["max_iter"], x["deqkit_bytes"] / 2**20) for x in rows if x["estimator"] in ("ift", "neumann k=1")]
    return grows_vs_flat(unrolled, implicit, "MB", 3)


def _sa_backward(key: str) -> Callable[[Results], Measured]:
    def measure(r: Results) -> Measured:
        rows = r(SA_BACKWARD_FILE)["backward"]["rows"]
        pick = {m: [(x["iters"], x[key]) for x in rows if x["method"] == m] for m in ("vanilla", "implicit")}
        return grows_vs_flat(pick["vanilla"], pick["implicit"], "MB" if key.endswith("mb") else "s",
                             1 if key.endswith("mb") else 3)
    return measure


def _slate_cost(key: str) -> Callable[[Results], Measured]:
    def measure(r: Results) -> Measured:
        rows = r("slate_cost.json")["results"]["rows"]
        pick = {b: [(x["iters"], x[key]) for x in rows if x["backward"] == b] for b in ("unrolled", "neumann")}
        return grows_vs_flat(pick["unrolled"], pick["neumann"], "MB" if key.endswith("mb") else "s",
                             2 if key.endswith("mb") else 3)
    return measure


def _set_cost(key: str) -> Callable[[Results], Measured]:
    def measure(r: Results) -> Measured:
        rows = [x for x in r(SET_BACKWARD_FILE)["results"]["backward"] if x["task"] == "properties"]
        pick = {b: [(x["iters"], x[key]) for x in rows if x["backward"] == b] for b in ("unrolled", "neumann")}
        return grows_vs_flat(pick["unrolled"], pick["neumann"], "MB" if key.endswith("mb") else "s",
                             1 if key.endswith("mb") else 3)
    return measure


def table2(r: Results) -> Measured:
    """IN (iteration forward, Neumann backward: the paper's method) against the variant that changes one part:
    IB (Broyden-solved IFT backward) and BN (Broyden forward), on test FG-ARI; all four variants' numbers shown."""
    runs = r(T2_FILE)["results"]["runs"]
    by = {v: [runs[k] for k in names] for v, names in seed_groups(runs).items()}

    def values(v: str, metric: str) -> list[float]:
        return seed_values(r, T2_FILE, v, metric)

    cells = [f"{v} {show(mean_sd(values(v, 'fg_ari')))}, MSE {mean_sd(values(v, 'mse'))['mean']:.4f}, "
             f"{mean_sd([run['train_minutes'] for run in by[v]])['mean']:.1f} min" for v in T2_VARIANTS]
    backward = compare(values("IN", "fg_ari"), values("IB", "fg_ari"), "higher", 3, ("IN", "IB"))
    forward = compare(values("IN", "fg_ari"), values("BN", "fg_ari"), "higher", 3, ("IN", "BN"))
    verdict = combine([("for the backward (Neumann vs Broyden IFT)", backward.verdict),
                       ("for the forward (iteration vs Broyden)", forward.verdict)])
    steps = by["IN"][0]["steps"]
    return Measured(f"test FG-ARI after {steps} steps: " + "; ".join(cells), verdict,
                    f"Neumann vs Broyden IFT: {backward.deqkit}; iteration vs Broyden forward: {forward.deqkit}")


def seed_values(r: Results, file: str, group: str, metric: str, variant: str = "as_trained") -> list[float]:
    """One configuration's metric over its seeds, from a ``benchmarks/score_runs.py`` file's ``groups``."""
    return r(file)["results"]["groups"][group][variant][metric]["values"]


def _arms(file: str, implicit: str, vanilla: str, metric: str, favours: str,
          digits: int) -> Callable[[Results], Measured]:
    """Implicit against vanilla over seeds, two configurations of one ``score_runs.py`` file."""
    def measure(r: Results) -> Measured:
        return compare(seed_values(r, file, implicit, metric), seed_values(r, file, vanilla, metric), favours, digits)
    return measure


def fig5_exact(r: Results) -> Measured:
    """The dense-Jacobian ‖J‖₂ at the final checkpoints of the 3000-step runs (IN: implicit, VN: vanilla)."""
    runs = r(SPECTRAL_FILE)["results"]
    values = {v: [runs[k]["exact"]["mean"] for k in names] for v, names in seed_groups(runs).items()}
    found = compare(values["IN"], values["VN"], "lower", 2)
    return Measured(f"exact ‖J‖₂ at step 3000: {found.deqkit}", found.verdict,
                    "one point at the end of training, not the paper's curve; the logged estimate is within "
                    f"{max(1 - x['logged_over_exact']['mean'] for x in runs.values()) * 100:.1f} % of it")


def fig6b_test_iterations(r: Results) -> Measured:
    """The same runs (trained with 5 iterations) tested with 1, 3 and 7: test FG-ARI per count."""
    parts, verdicts = [], []
    for iters in (1, 3, 7):
        found = compare(seed_values(r, SA_SEEDS_FILE, "IN", "fg_ari", f"iters{iters}"),
                        seed_values(r, SA_SEEDS_FILE, "VN", "fg_ari", f"iters{iters}"), "higher", 3)
        parts.append(f"T={iters}: {found.deqkit}")
        verdicts.append(found.verdict)
    verdict = combine([(f"at T={i}", v) for i, v in zip((1, 3, 7), verdicts)])
    return Measured("test FG-ARI " + "; ".join(parts), verdict)


def _curves(file: str, iters: int, metric: str, favours: str, digits: int) -> Callable[[Results], Measured]:
    def measure(r: Results) -> Measured:
        runs = r(file)["curves"]["runs"]
        values = {m: [last_point(c, metric) for k, c in runs.items() if k.startswith(f"{m}/T={iters}/")]
                  for m in ("implicit", "vanilla")}
        return compare(values["implicit"], values["vanilla"], favours, digits)
    return measure


def _long(metric: str, favours: str, digits: int) -> Callable[[Results], Measured]:
    def measure(r: Results) -> Measured:
        runs = r("slot_attention_long_vanilla_vs_implicit.json")["runs"]
        return compare([last_point(runs["implicit (neumann)"], metric)],
                       [last_point(runs["vanilla (unrolled)"], metric)], favours, digits)
    return measure


def _slate_gpt(metric: str, favours: str, digits: int) -> Callable[[Results], Measured]:
    def measure(r: Results) -> Measured:
        found = _arms(SLATE_GPT_FILE, "gpt-neumann", "gpt-unrolled", metric, favours, digits)(r)
        return Measured(found.deqkit, found.verdict, "the image-GPT decoder barely reads the slots at this budget "
                        "(docs/slate.md): an all-black image scores 383")
    return measure


def _ia_seeds(r: Results, group: str, metric: str = "fg_ari") -> list[float]:
    """A configuration's metric over its seeds in interaction_asymmetry.json (runs NAME, NAME-s1, ...)."""
    res = r("interaction_asymmetry.json")["results"]
    return [res[name][metric] for name in seed_groups(res)[group]]


def ia_vs_slot_attention(r: Results) -> Measured:
    found = compare(_ia_seeds(r, "ia"), _ia_seeds(r, "implicit"), "higher", 3, ("VAE", "implicit slot attention"))
    vanilla = mean_sd(_ia_seeds(r, "vanilla"))
    fixed = mean_sd(_ia_seeds(r, "ia", "fixed_partition_fg_ari"))
    return Measured(f"FG-ARI: {found.deqkit}, vanilla slot attention {show(vanilla)}", found.verdict,
                    f"the VAE's masks are fixed image regions: one partition for every image scores {show(fixed)}")


def ia_alpha(r: Results) -> Measured:
    return compare(_ia_seeds(r, "ia"), _ia_seeds(r, "ia-alpha0"), "higher", 3, ("alpha=0.05", "alpha=0"))


def ia_attempts(r: Results) -> Measured:
    """The session of attempts to make the VAE find objects: FG-ARI (fixed-partition FG-ARI) per attempt."""
    res = r(IA_ATTEMPTS_FILE)["results"]

    def three(x: float) -> str:
        return f"{x:.3f}".replace("-0.000", "0.000")

    cells = [f"{name} {three(run['fg_ari'])} ({three(run['fixed_partition_fg_ari'])})" for name, run in res.items()]
    return Measured("FG-ARI (fixed partition): " + ", ".join(cells), "not conclusive (1 seed)",
                    "no attempt discovers objects: longer training and wider slots keep the quadrants, a stronger "
                    "penalty puts the image in one slot (docs/interaction_asymmetry.md)")


def _spectral(file: str, implicit: Sequence[str], vanilla: Sequence[str], from_step: int,
              note: str) -> Callable[[Results], Measured]:
    def measure(r: Results) -> Measured:
        runs = r(file)["results"]["runs"]
        per = {k: spectral_mean(runs[k]["spectral_norm"], from_step) for k in (*implicit, *vanilla)}
        found = compare([per[k] for k in implicit], [per[k] for k in vanilla], "lower", 2)
        seeds = (f"; per seed {' / '.join(f'{per[k]:.2f}' for k in implicit)} vs "
                 f"{' / '.join(f'{per[k]:.2f}' for k in vanilla)}") if len(implicit) > 1 else ""
        return Measured(f"mean ‖J‖ from step {from_step}: {found.deqkit}{seeds}", found.verdict, note)
    return measure


def fig5_slot_attention(r: Results) -> Measured:
    """‖J‖ logged over the 12000-step cpu-preset runs (no clipping, warm-up 200), one seed per arm."""
    runs = r("slot_attention_long_vanilla_vs_implicit.json")["runs"]
    per = {m: spectral_mean([(x["step"], x["spectral_norm"]) for x in runs[f"{m} spectral"]], 4000)
           for m in ("implicit (neumann)", "vanilla (unrolled)")}
    found = compare([per["implicit (neumann)"]], [per["vanilla (unrolled)"]], "lower", 2)
    return Measured(f"mean ‖J‖ from step 4000: {found.deqkit}", found.verdict,
                    "both grow over training (docs/slot_attention.md)")


def _short_names(backward: str, setting: str) -> tuple[str, ...]:
    """The 3000-step SLATE runs ``short-BACKWARD-SETTING-sSEED`` of slate_ablation.json, one per seed."""
    return tuple(f"short-{backward}-{setting}-s{seed}" for seed in SLATE_SHORT_SEEDS)


def fig6b_slate(r: Results) -> Measured:
    """Train = test iterations 1/3/7 on the 3000-step SLATE runs: test FG-ARI per count over seeds."""
    runs = r(SLATE_SHORT_FILE)["results"]["runs"]
    parts, verdicts = [], []
    for iters in (1, 3, 7):
        found = compare([runs[n]["test"]["fg_ari"] for n in _short_names("neumann", f"iters{iters}")],
                        [runs[n]["test"]["fg_ari"] for n in _short_names("unrolled", f"iters{iters}")], "higher", 3)
        parts.append(f"T={iters}: {found.deqkit}")
        verdicts.append(found.verdict)
    mse = max(runs[n]["test"]["mse"] for b in ("neumann", "unrolled") for i in (1, 3, 7)
              for n in _short_names(b, f"iters{i}"))
    return Measured("test FG-ARI (first 128 test images) " + "; ".join(parts),
                    combine([(f"at T={i}", v) for i, v in zip((1, 3, 7), verdicts)]),
                    f"runs before grouping: test slot MSE up to {mse:.0f} per image (an all-black image scores 383)")


def fig6b_slot_attention(r: Results) -> Measured:
    runs = r("slot_attention.json")["curves"]["runs"]
    parts, verdicts = [], []
    for iters in (1, 3, 7):
        values = {m: [last_point(c, "fg_ari") for k, c in runs.items() if k.startswith(f"{m}/T={iters}/")]
                  for m in ("implicit", "vanilla")}
        found = compare(values["implicit"], values["vanilla"], "higher", 2)
        parts.append(f"T={iters}: {found.deqkit}")
        verdicts.append(found.verdict)
    verdict = combine([(f"at T={i}", v) for i, v in zip((1, 3, 7), verdicts)])
    return Measured("val FG-ARI " + "; ".join(parts), verdict)


# ------------------------------------------------------------------------------------------ the claims

T2_VARIANTS = {  # Chang et al.'s four variants: forward (I: iteration, B: Broyden), backward (B: IFT, N: Neumann)
    "IN": "",
    "IB": "--set backward=ift --set ift_solver=broyden --set ift_iters=7",
    "BN": "--set solver=broyden --set iters=7 --set tol=0.001",
    "BB": "--set solver=broyden --set iters=7 --set tol=0.001 --set backward=ift --set ift_solver=broyden "
          "--set ift_iters=7",
}
T2_FILE = "claims_t2.json"
SA_SEEDS_FILE = "slot_attention_cpu_3000_seeds.json"
SPECTRAL_FILE = "spectral_estimate.json"
IA_ATTEMPTS_FILE = "interaction_asymmetry_attempts.json"
T2_STEPS = "--set train.steps=3000 --set train.image_every=3000"
SLATE_RUNS = ("for s in 0 1 2; do deqkit train slate --set backward=neumann --set train.seed=$s --out runs/neumann-s$s; "
              "deqkit train slate --set backward=unrolled --set train.seed=$s --out runs/unrolled-s$s; done",
              "PYTHONPATH=. python benchmarks/slate.py report runs/neumann-s* runs/unrolled-s* --name main",
              "PYTHONPATH=. python benchmarks/score_runs.py runs/neumann-s* runs/unrolled-s* "
              f"--json {RESULTS}/slate_main_test.json")
SLATE_TEST_FILE = "slate_main_test.json"  # all 1000 test images; slate_main.json scores the first 128
SLATE_GPT_FILE = "slate_gpt_test.json"  # cpu_gpt, 3 seeds per arm, all 1000 test images
SLATE_SHORT_FILE = "slate_ablation.json"  # 3000-step SLATE runs, 3 seeds each: iterations 1/3/7 and no clipping
SLATE_SHORT_SEEDS = (0, 1, 2)
SLATE_SHORT = ("S='--set train.steps=3000 --set tau_steps=1500 --set train.eval_every=1500 --set train.ckpt_every=1500 "
               "--set train.image_every=1500 --set train.log_every=25'; for s in 0 1 2; do for b in neumann unrolled; "
               "do for i in 1 3 7; do deqkit train slate $S --set train.seed=$s --set backward=$b --set iters=$i "
               "--out runs/short-$b-iters$i-s$s; done; deqkit train slate $S --set train.seed=$s --set backward=$b "
               "--set train.grad_clip=none --set train.warmup=0 --out runs/short-$b-noclip-nowarm-s$s; done; done",
               "PYTHONPATH=. python benchmarks/slate.py report runs/short-* --name ablation")
SLATE_GPU = ("deqkit train slate --preset paper --out runs/slate-paper  # vanilla, as published",
             "deqkit train slate --preset paper_implicit --out runs/slate-paper-implicit")
SA_GPU = ("for b in neumann unrolled; do deqkit train slot_attention --preset paper --set backward=$b "
          "--out runs/sa-paper-$b; done",)
SA_BACKWARD_FILE = "slot_attention_backward.json"  # apart from slot_attention.json, whose trainings are older
SA_BACKWARD_CMDS = ("PYTHONPATH=. python benchmarks/slot_attention.py --parts backward "
                    f"--json {RESULTS}/{SA_BACKWARD_FILE}",)
SET_BACKWARD_FILE = "set_prediction_backward.json"
SET_BACKWARD_CMDS = ("PYTHONPATH=. python benchmarks/set_prediction.py --parts backward "
                     f"--json {RESULTS}/{SET_BACKWARD_FILE}",)
SETS_FILE = "set_prediction_sets88_seeds.json"
SETS_CMDS = ("for b in neumann unrolled; do for s in 0 1 2; do deqkit train set_prediction --preset cpu_sets_8x8 "
             "--set backward=$b --seed $s --out runs/sets/sets88_${b}_s$s; done; done",
             "deqkit train set_prediction --preset cpu_dspn --out runs/sets/props_dspn_s0",
             f"PYTHONPATH=. python benchmarks/score_runs.py runs/sets/* --json {RESULTS}/{SETS_FILE}")
SET_PROPS_FILE = "set_prediction_props_seeds.json"
SET_PROPS_CMDS = ("for b in neumann unrolled; do for s in 0 1 2; do deqkit train set_prediction --preset cpu --seed $s "
                  "--set train.steps=4000 --set train.eval_every=500 --set train.ckpt_every=1000 --set test_iters=none "
                  "--set backward=$b --out runs/props/props_${b}_s$s; done; done",
                  f"PYTHONPATH=. python benchmarks/score_runs.py runs/props/* --json {RESULTS}/{SET_PROPS_FILE}")
IA_CMDS = ("the eleven runs and `benchmarks/interaction_asymmetry.py --runs ...` listed under Reproduce in "
           "docs/interaction_asymmetry.md",)
SA_CURVES = "PYTHONPATH=. python benchmarks/slot_attention.py --parts curves"
SA_64 = ("PYTHONPATH=. python benchmarks/slot_attention.py --parts curves --full-size --iters 5 --steps 4000 "
         "--methods vanilla --json benchmarks/results/slot_attention_64px.json  # and --methods implicit",)
SA_SEEDS = ("for s in 0 1 2; do deqkit train slot_attention --seed $s {steps} --out runs/t2/IN_s$s; deqkit train "
            "slot_attention --seed $s {steps} --set backward=unrolled --out runs/t2/VN_s$s; done",
            "PYTHONPATH=. python benchmarks/score_runs.py runs/t2/IN_s? runs/t2/VN_s? --variant iters1:iters=1 "
            "--variant iters3:iters=3 --variant iters7:iters=7 --json {results}/{file}")
SA_LONG = ("deqkit train slot_attention --set train.steps=12000 [--set backward=unrolled]",)
PAPER_T1 = "backward memory and time constant in the iterations for implicit, linear for unrolled (numbers not " \
    "transcribed here)"
PAPER_T3 = "implicit ≥ vanilla (SLATE numbers below; slot attention's not transcribed here)"
PAPER_MSE = "CLEVR-Mirror slot MSE 10.66 implicit vs 67.04 vanilla (6.3x lower)"
PAPER_F5 = "implicit's ‖J‖ stays bounded, vanilla's grows without clipping and warm-up (a plot)"
PAPER_F6B = "implicit ≥ vanilla at 1, 3 and 7 iterations (a plot)"
NOT_IN_PAPER = "not in the paper: deqkit's test of the same claim (implicit ≥ vanilla)"

CLAIMS: tuple[Claim, ...] = (
    Claim("T1-core", "Chang et al., Table 1", "backward memory vs iterations, tanh DEQ (batch 64, width 256)", PAPER_T1,
          ("memory.json",), memory_core, ("PYTHONPATH=. python benchmarks/memory.py",)),
    Claim("T1-sa-mem", "Chang et al., Table 1", "slot attention: MB saved for backward vs iterations", PAPER_T1,
          (SA_BACKWARD_FILE,), _sa_backward("slot_attention_saved_mb"), SA_BACKWARD_CMDS),
    Claim("T1-sa-time", "Chang et al., Table 1", "slot attention autoencoder: backward seconds vs iterations", PAPER_T1,
          (SA_BACKWARD_FILE,), _sa_backward("backward_s"), SA_BACKWARD_CMDS),
    Claim("T1-slate-mem", "Chang et al., Table 1", "SLATE cpu: slot attention MB saved for backward", PAPER_T1,
          ("slate_cost.json",), _slate_cost("slot_attention_saved_mb"), ("PYTHONPATH=. python benchmarks/slate.py cost",)),
    Claim("T1-slate-time", "Chang et al., Table 1", "SLATE cpu: whole-step backward seconds", PAPER_T1,
          ("slate_cost.json",), _slate_cost("backward_s"), ("PYTHONPATH=. python benchmarks/slate.py cost",)),
    Claim("T1-set-mem", "Chang et al., Table 1", "set prediction (slot attention decoder): MB saved for backward",
          PAPER_T1, (SET_BACKWARD_FILE,), _set_cost("saved_mb"), SET_BACKWARD_CMDS),
    Claim("T1-set-time", "Chang et al., Table 1", "set prediction (slot attention decoder): backward seconds",
          PAPER_T1, (SET_BACKWARD_FILE,), _set_cost("backward_s"), SET_BACKWARD_CMDS),
    Claim("T2", "Chang et al., Table 2 / Figure 3",
          "slot attention cpu preset at 3000 steps (3 seeds each): forward by iteration (5 updates) or Broyden (at "
          "most 7 iterations, tol 1e-3) × backward by Broyden-solved IFT (at most 7 adjoint iterations) or "
          "Neumann(1): IB, BB, IN, BN; the verdict compares IN with IB and BN",
          "IN trains as well as the Broyden variants at lower cost (numbers not transcribed here)", (T2_FILE,),
          table2,
          (*(f"for s in 0 1 2; do deqkit train slot_attention --seed $s {T2_STEPS} {opts} --out runs/t2/{v}_s$s; "
             "done".replace("  ", " ") for v, opts in T2_VARIANTS.items()),
           f"PYTHONPATH=. python benchmarks/score_runs.py runs/t2/* --json {RESULTS}/{T2_FILE}"),
          implicit_metrics=True,
          gpu=tuple(f"deqkit train slot_attention --preset paper {opts} --out runs/t2-paper-{v}".replace("  ", " ")
                    for v, opts in T2_VARIANTS.items())),
    Claim("T3-sa-fgari", "Chang et al., Table 3", "slot attention, cpu model at 64 px, 5 iterations, 4000 steps: "
          "val FG-ARI", PAPER_T3, ("slot_attention_64px.json",), _curves("slot_attention_64px.json", 5, "fg_ari",
                                                                         "higher", 3), SA_64, True, SA_GPU),
    Claim("T3-sa-mse", "Chang et al., Table 3", "slot attention, same runs: val MSE", PAPER_T3,
          ("slot_attention_64px.json",), _curves("slot_attention_64px.json", 5, "mse", "lower", 4), SA_64, True,
          SA_GPU),
    Claim("T3-sa-32px", "Chang et al., Table 3", "slot attention at 32 px, 3 iterations, 1500 steps: val MSE",
          PAPER_T3, ("slot_attention.json",), _curves("slot_attention.json", 3, "mse", "lower", 4), (SA_CURVES,), True),
    Claim("T3-sa-cpu", "Chang et al., Table 3", "slot attention cpu preset (5 iterations), 3000 steps, 3 seeds: test "
          "FG-ARI", PAPER_T3, (SA_SEEDS_FILE,), _arms(SA_SEEDS_FILE, "IN", "VN", "fg_ari", "higher", 3),
          tuple(c.format(steps=T2_STEPS, results=RESULTS, file=SA_SEEDS_FILE) for c in SA_SEEDS), True, SA_GPU),
    Claim("T3-sa-cpu-mse", "Chang et al., Table 3", "slot attention, same runs: test MSE", PAPER_T3, (SA_SEEDS_FILE,),
          _arms(SA_SEEDS_FILE, "IN", "VN", "mse", "lower", 4),
          tuple(c.format(steps=T2_STEPS, results=RESULTS, file=SA_SEEDS_FILE) for c in SA_SEEDS), True),
    Claim("T3-sa-long", "Chang et al., Table 3", "slot attention cpu preset, 12000 steps: val FG-ARI", PAPER_T3,
          ("slot_attention_long_vanilla_vs_implicit.json",), _long("fg_ari", "higher", 3), SA_LONG, True),
    Claim("T3-slate-mse", "Chang et al., Table 3", "SLATE cpu preset, 6000 steps: test slot MSE (sum per image)",
          PAPER_MSE, (SLATE_TEST_FILE,), _arms(SLATE_TEST_FILE, "neumann", "unrolled", "mse", "lower", 1), SLATE_RUNS,
          True, SLATE_GPU),
    Claim("T3-slate-fgari", "Chang et al., Table 3", "SLATE cpu preset, same runs: test FG-ARI", PAPER_T3,
          (SLATE_TEST_FILE,), _arms(SLATE_TEST_FILE, "neumann", "unrolled", "fg_ari", "higher", 3), SLATE_RUNS, True,
          SLATE_GPU),
    Claim("T3-slate-gpt", "Chang et al., Table 3", "SLATE cpu_gpt (image-GPT decoder), 5000 steps, 3 seeds: test slot "
          "MSE", PAPER_MSE, (SLATE_GPT_FILE,), _slate_gpt("mse", "lower", 1),
          ("for s in 0 1 2; do for b in neumann unrolled; do deqkit train slate --preset cpu_gpt --set backward=$b "
           "--seed $s --out runs/gpt-$b-s$s; done; done",
           "PYTHONPATH=. python benchmarks/score_runs.py runs/gpt-* --json "
           f"{RESULTS}/{SLATE_GPT_FILE}"), True, SLATE_GPU),
    Claim("T3-set-props", "(extension of Table 3)", "set prediction (properties), slot attention decoder, 4000 steps: "
          "test AP∞", NOT_IN_PAPER, (SET_PROPS_FILE,),
          _arms(SET_PROPS_FILE, "props_neumann", "props_unrolled", "ap_inf", "higher", 3), SET_PROPS_CMDS, True,
          ("deqkit train set_prediction --preset paper [--set backward=unrolled]",)),
    Claim("T3-set-props-ap125", "(extension of Table 3)", "set prediction (properties), same runs: test AP@0.125 "
          "(the strictest distance threshold)", NOT_IN_PAPER, (SET_PROPS_FILE,),
          _arms(SET_PROPS_FILE, "props_neumann", "props_unrolled", "ap_0.125", "higher", 3), SET_PROPS_CMDS, True),
    Claim("T3-set-sets", "(extension of Table 3)", "random sets 8x8, DSPN decoder, 4000 steps, 3 seeds: test set "
          "loss", NOT_IN_PAPER, (SETS_FILE,),
          _arms(SETS_FILE, "sets88_neumann", "sets88_unrolled", "set_loss", "lower", 3), SETS_CMDS, True,
          ("deqkit train set_prediction --preset paper_sets [--set backward=unrolled]",)),
    Claim("IA-objects", "Brady et al. 2024, abstract", "a Transformer VAE with the interaction penalty discovers "
          "objects without slot attention, as well as slot attention does: FG-ARI", "object discovery (numbers not "
          "transcribed here)", ("interaction_asymmetry.json",), ia_vs_slot_attention, IA_CMDS, True),
    Claim("IA-alpha", "Brady et al. 2024, abstract", "the interaction penalty is what separates: VAE FG-ARI with "
          "alpha=0.05 vs alpha=0", "the penalty is needed (numbers not transcribed here)",
          ("interaction_asymmetry.json",), ia_alpha, IA_CMDS),
    Claim("IA-attempts", "Brady et al. 2024, abstract", "the VAE discovers objects given more penalty (alpha 0.5, "
          "2), wider slots (latent 32) or longer training (3600 steps); seed 0 each", "object discovery (numbers not "
          "transcribed here)", (IA_ATTEMPTS_FILE,), ia_attempts,
          ("the commands under \"Attempts to make the VAE find objects\" in docs/interaction_asymmetry.md",)),
    Claim("F5-slate", "Chang et al., Figure 5", "SLATE cpu preset (clip 1.0, warm-up 200), 3 seeds: ‖J‖ of the slot "
          "attention step", PAPER_F5, ("slate_main.json",),
          _spectral("slate_main.json", ("neumann-s0", "neumann-s1", "neumann-s2"),
                    ("unrolled-s0", "unrolled-s1", "unrolled-s2"), 4000,
                    "the logged estimate matches the dense Jacobian's norm of the same map (docs/slate.md); the "
                    "paper's growth without clipping and warm-up needs its GPU-length runs"), SLATE_RUNS,
          gpu=SLATE_GPU),
    Claim("F5-sa", "Chang et al., Figure 5", "slot attention cpu preset, 12000 steps (no clipping, warm-up 200): ‖J‖ "
          "of the slot attention step", PAPER_F5, ("slot_attention_long_vanilla_vs_implicit.json",),
          fig5_slot_attention, SA_LONG),
    Claim("F5-sa-exact", "Chang et al., Figure 5", "slot attention cpu preset, 3000 steps (no clipping, warm-up "
          "200), 3 seeds: exact ‖J‖₂ of the step at the final checkpoint, 16 validation images", PAPER_F5,
          (SPECTRAL_FILE,), fig5_exact,
          (SA_SEEDS[0].format(steps=T2_STEPS), SLATE_RUNS[0],
           "PYTHONPATH=. python benchmarks/spectral_estimate.py runs/neumann-s0 runs/unrolled-s0 runs/t2/IN_s? "
           f"runs/t2/VN_s? --json {RESULTS}/{SPECTRAL_FILE}")),
    Claim("F5-slate-noclip", "Chang et al., Figure 5",
          "SLATE cpu schedule, 3000 steps, no clipping, no warm-up, 3 seeds: ‖J‖",
          PAPER_F5, (SLATE_SHORT_FILE,),
          _spectral(SLATE_SHORT_FILE, _short_names("neumann", "noclip-nowarm"),
                    _short_names("unrolled", "noclip-nowarm"), 1000,
                    "the paper's condition, at 3000 of its steps"), SLATE_SHORT),
    Claim("F5-gpt-noclip", "Chang et al., Figure 5", "SLATE cpu_gpt, 1500 steps, no clipping, no warm-up: ‖J‖",
          PAPER_F5, ("slate_gpt_ablation.json",),
          _spectral("slate_gpt_ablation.json", ("short-noclip-nowarm-neumann",), ("short-noclip-nowarm-unrolled",),
                    1000, "a decoder that ignored the slots (docs/slate.md)"),
          ("commands in docs/slate.md (\"SLATE's image-GPT decoder at CPU scale\")",)),
    Claim("F6b-slate", "Chang et al., Figure 6b",
          "SLATE cpu schedule, 3000 steps, 3 seeds, iterations 1/3/7 (train = test)",
          PAPER_F6B, (SLATE_SHORT_FILE,), fig6b_slate, SLATE_SHORT, True,
          ("for b in neumann unrolled; do for i in 1 3 7; do for s in 0 1 2; do deqkit train slate --set backward=$b "
           "--set iters=$i --set train.seed=$s --out runs/f6b-$b-$i-s$s; done; done; done  # full length, 3 seeds",)),
    Claim("F6b-sa-test", "Chang et al., Figure 6b", "slot attention cpu preset, 3000 steps, 3 seeds, trained with 5 "
          "iterations and tested with 1/3/7", PAPER_F6B, (SA_SEEDS_FILE,), fig6b_test_iterations,
          tuple(c.format(steps=T2_STEPS, results=RESULTS, file=SA_SEEDS_FILE) for c in SA_SEEDS), True),
    Claim("F6b-sa", "Chang et al., Figure 6b", "slot attention at 32 px, 1500 steps, iterations 1/3/7 (train = test)",
          PAPER_F6B, ("slot_attention.json",), fig6b_slot_attention, (SA_CURVES,), True),
)


# ------------------------------------------------------------------------------------------ the page


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def render(results: Results, claims: Sequence[Claim] = CLAIMS) -> str:
    """The whole page, deterministic for the same results files."""
    rows, measured = [], {}
    for claim in claims:
        if not all((results.root / RESULTS / f).is_file() for f in claim.files):
            found = Measured("—", "not measured yet", "its results file is not written yet; the commands are below")
            measured[claim.id] = found
            rows.append(f"| {claim.id} | {_cell(claim.source)} | {_cell(claim.claim)} | {_cell(claim.paper)} | — | "
                        f"**{found.verdict}** — {found.why} | none yet |")
            continue
        found = claim.measure(results)
        measured[claim.id] = found
        dagger = "†" if claim.implicit_metrics and any(results.before_eval_fix(f) for f in claim.files) else ""
        files = "; ".join(f"`{RESULTS}/{f}`, {results.provenance(f)}" for f in claim.files) or "none yet"
        verdict = f"**{found.verdict}**" + (f" — {found.why}" if found.why else "")
        rows.append(f"| {claim.id} | {_cell(claim.source)} | {_cell(claim.claim)} | {_cell(claim.paper)} | "
                    f"{_cell(found.deqkit)}{dagger} | {_cell(verdict)} | {_cell(files)} |")
    lines = [
        "# The seed paper's claims against what deqkit measures",
        "",
        "<!-- generated by `python -m benchmarks.claims`; do not edit by hand -->",
        "",
        "Chang, Griffiths & Levine, \"Object Representations as Fixed Points\" (NeurIPS 2022), and the "
        "interaction-asymmetry abstract (Brady et al. 2024), claim by claim, at CPU scale. This page is generated "
        "from the results files in `benchmarks/results/`; each row names its file and the commit that wrote it. "
        "The settings are deqkit's procedural scenes at CPU scale, not the paper's datasets.",
        "",
        f"> **Measured before the evaluation fix (†).** Numbers marked † include evaluation metrics of implicit "
        f"models from results files written at commit {EVAL_FIX} or earlier (or without provenance), when "
        f"evaluation applied the fixed point's update one time fewer than training did (docs/core.md, \"How many "
        f"times `f` runs\"; README). Training is unchanged; rerun the row's commands to score with the current code.",
        "",
        "Verdicts: **holds** / **reversed**: the gap between implicit and vanilla exceeds the spread (the sum of "
        "the two arms' standard deviations over seeds; `benchmarks.common.beyond_spread`, the rule of "
        "`benchmarks/slate.py report`) in the paper's / the opposite direction; **no difference beyond the "
        "spread**; **not conclusive (1 seed)**: an arm has one seed, so no spread; **not measured yet**. For "
        "Table 1 the spread is implicit's range over the iteration counts (timing noise; 0 for memory), against "
        "unrolled's growth from the fewest to the most iterations. The paper column is typed from the paper; "
        "\"not transcribed here\" marks claims whose numbers were not checked against the paper in this "
        "repository.",
        "",
        "| id | source | claim (deqkit's setting) | paper | deqkit (CPU) | verdict | results file (provenance) |",
        "|---|---|---|---|---|---|---|",
        *rows,
        "",
        "## Commands",
        "",
        "The commands that wrote each row's results file; `deqkit` is `python -m deqkit`. Those under "
        "\"for a GPU\" (the `paper*` presets) do not fit two CPU cores in a session.",
        "",
    ]
    for claim in claims:
        lines.append(f"**{claim.id}**")
        lines.append("")
        lines.append("```")
        lines.extend(claim.commands)
        lines.append("```")
        if claim.gpu:
            lines.append("")
            lines.append("For a GPU:")
            lines.append("")
            lines.append("```")
            lines.extend(claim.gpu)
            lines.append("```")
        lines.append("")
    lines += [
        "## How to regenerate",
        "",
        "```",
        "python -m benchmarks.claims            # rewrite docs/claims.md from benchmarks/results/",
        "python -m benchmarks.claims --check    # exit 1 if docs/claims.md differs from what the results give",
        "```",
        "",
        "A claim is a `Claim` in `benchmarks/claims.py`: the paper's statement and source, the results files, the "
        "function that reads them and the commands. After rerunning a row's commands (its results file changes), "
        "rerun the generator and commit both; `tests/test_benchmarks_claims.py` fails while the page is stale.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="accepted for the shared interface (the page is always fast)")
    p.add_argument("--check", action="store_true", help="do not write; exit 1 if the page differs from the results")
    p.add_argument("--out", type=Path, default=PAGE, help=f"the page (default {PAGE.relative_to(ROOT)})")
    p.add_argument("--root", type=Path, default=ROOT, help="repository root holding benchmarks/results/")
    args = p.parse_args(argv)
    page = render(Results(args.root.resolve()))
    if args.check:
        current = args.out.read_text(encoding="utf-8") if args.out.exists() else ""
        if current != page:
            print(f"{args.out} is stale: run `python -m benchmarks.claims`")
            return 1
        print(f"{args.out} matches the results files ({len(CLAIMS)} claims)")
        return 0
    args.out.write_text(page, encoding="utf-8")
    print(f"wrote {args.out} ({len(CLAIMS)} claims)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
