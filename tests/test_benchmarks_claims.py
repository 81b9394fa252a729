"""``python -m benchmarks.claims``: docs/claims.md is generated from the results files, every claim has a
verdict and a source, and the committed page is exactly what the results give."""

from __future__ import annotations

import json
import re
from pathlib import Path

from benchmarks.claims import (CLAIMS, PAGE, RESULTS, VERDICTS, Results, combine, compare, grows_vs_flat, main,
                               render)
from benchmarks.common import beyond_spread, mean_sd

ROOT = Path(__file__).resolve().parents[1]


def table_rows(page: str) -> list[list[str]]:
    """The cells of the claims table's body rows (a ``\\|`` inside a cell is not a separator)."""
    rows = []
    for line in page.splitlines():
        if line.startswith("| ") and not line.startswith("| id |"):
            rows.append([c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]])
    return rows


def test_every_claim_row_has_a_verdict_and_a_results_file_or_says_it_is_not_measured():
    page = render(Results(ROOT))
    rows = table_rows(page)
    assert [r[0] for r in rows] == [c.id for c in CLAIMS]
    for claim, (cid, source, _, paper, deqkit, verdict, files) in zip(CLAIMS, rows):
        assert source and paper and deqkit, cid
        assert any(verdict.startswith(f"**{v}") for v in VERDICTS), (cid, verdict)
        assert claim.commands, cid
        if verdict.startswith("**not measured yet"):
            assert files == "none yet" and f"**{cid}**" in page
            continue
        for name in claim.files:
            assert (ROOT / RESULTS / name).is_file(), name
            assert f"`{RESULTS}/{name}`" in files
        assert "commit " in files or "no provenance" in files, cid


def test_the_committed_page_is_what_the_results_give(capsys):
    assert main(["--check"]) == 0, "docs/claims.md is stale: run `python -m benchmarks.claims`"
    assert PAGE.read_text(encoding="utf-8") == render(Results(ROOT))


def test_check_fails_on_an_edited_page_and_writing_repairs_it(tmp_path):
    page = tmp_path / "claims.md"
    assert main(["--out", str(page)]) == 0
    assert main(["--check", "--out", str(page)]) == 0
    page.write_text(page.read_text(encoding="utf-8").replace("**holds**", "**reversed**", 1), encoding="utf-8")
    assert main(["--check", "--out", str(page)]) == 1
    assert main(["--out", str(page)]) == 0 and main(["--check", "--out", str(page)]) == 0


def test_the_verdict_follows_the_seed_spread_and_the_papers_direction():
    low, high = [1.0, 1.1, 0.9], [2.0, 2.1, 1.9]
    assert compare(low, high, "lower").verdict == "holds"  # implicit lower, as the paper says
    assert compare(high, low, "lower").verdict == "reversed"
    assert compare(high, low, "higher").verdict == "holds"
    assert compare([1.0, 2.0, 3.0], [1.5, 2.5, 3.5], "higher").verdict == "no difference beyond the spread"
    assert compare([5.0], high, "lower").verdict == "not conclusive (1 seed)"
    assert "(1 seed)" in compare([5.0], high, "lower").deqkit and "(3 seeds)" in compare([5.0], high, "lower").deqkit


def test_beyond_spread_is_the_gap_against_the_sum_of_the_standard_deviations():
    a, b = mean_sd([1.0, 3.0]), mean_sd([4.0, 6.0])
    gap = beyond_spread(a, b)
    assert gap["difference"] == 3.0 and abs(gap["spread"] - 2 * 2**0.5) < 1e-12 and gap["beyond"]
    assert not beyond_spread(a, mean_sd([2.0, 4.0]))["beyond"]


def test_table1_needs_unrolled_growth_beyond_implicits_own_range():
    assert grows_vs_flat([(1, 1.0), (7, 3.0)], [(1, 1.0), (7, 1.0)], "MB", 1).verdict == "holds"
    assert grows_vs_flat([(1, 1.0), (7, 1.2)], [(1, 1.0), (7, 1.5)], "s", 1).verdict == \
        "no difference beyond the spread"


def test_slate_report_still_reproduces_its_stored_differences():
    """The verdict rule moved to benchmarks.common; slate.py's report must give what it wrote before."""
    from benchmarks.slate import group_differences, seed_groups

    stored = json.loads((ROOT / RESULTS / "slate_main.json").read_text())["results"]
    assert group_differences(seed_groups(stored["runs"])) == stored["differences"]


def test_provenance_and_the_evaluation_fix_marker(tmp_path):
    (tmp_path / RESULTS).mkdir(parents=True)
    (tmp_path / RESULTS / "old.json").write_text(json.dumps({"results": {}}))
    (tmp_path / RESULTS / "new.json").write_text(json.dumps({"provenance": {"commit": "f" * 40}, "results": {}}))
    results = Results(tmp_path)
    assert results.provenance("old.json") == "no provenance (written before provenance existed)"
    assert results.provenance("new.json") == "commit ffffffffffff"
    assert results.before_eval_fix("old.json")


def test_a_verdict_measured_in_parts_starts_with_a_verdict_word_decisive_first():
    assert combine([("at T=1", "holds"), ("at T=3", "holds")]) == "holds"
    mixed = combine([("at T=1", "no difference beyond the spread"), ("at T=7", "holds"),
                     ("at T=3", "no difference beyond the spread")])
    assert mixed == "holds at T=7; no difference beyond the spread at T=1, at T=3"


def test_the_slate_report_plots_one_mean_curve_per_setting():
    from benchmarks.slate import spectral_series

    def run(seed: int, values: list[float]) -> dict:
        return {"backward": "neumann", "iters": 3, "grad_clip": 1.0, "warmup": 200, "steps": 10, "seed": seed,
                "spectral_norm": [(s, v) for s, v in zip((5, 10), values)]}

    series = spectral_series({"a-s0": run(0, [1.0, 3.0]), "a-s1": run(1, [2.0, 5.0]),
                              "b": {**run(0, [7.0, 7.0]), "iters": 7}})
    assert series == {"neumann iters=3 clip=1.0 (2 seeds)": ([5, 10], [1.5, 4.0]), "b": ([5, 10], [7.0, 7.0])}
    longer = spectral_series({"a-s0": run(0, [1.0, 3.0]), "a-s1": run(1, [2.0, 5.0]),
                              "c-s0": {**run(0, [4.0, 4.0]), "warmup": 0}, "c-s1": {**run(1, [6.0, 6.0]), "warmup": 0}})
    assert sorted(longer) == ["neumann iters=3 clip=1.0 warmup=0 steps=10 (2 seeds)",
                              "neumann iters=3 clip=1.0 warmup=200 steps=10 (2 seeds)"]
