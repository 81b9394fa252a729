"""``python -m benchmarks.docs --check``: a documented number must equal its results file's value and say
whether the code changed since it was measured."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from benchmarks.docs import check, check_dates, date_sections, lookup, main, markers, matches, unmarked_numbers

ROOT = Path(__file__).resolve().parents[1]


def git(root: Path, *args: str) -> str:
    env = {**os.environ, "GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@t", "GIT_COMMITTER_NAME": "t",
           "GIT_COMMITTER_EMAIL": "t@t"}
    return subprocess.run(["git", *args], cwd=root, env=env, capture_output=True, text=True, check=True).stdout.strip()


@pytest.fixture
def repo(tmp_path: Path) -> Path:
    """A checkout with code in deqkit/, committed once."""
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    git(tmp_path, "init", "-q")
    (tmp_path / "deqkit").mkdir()
    (tmp_path / "deqkit" / "solver.py").write_text("STEPS = 1\n")
    git(tmp_path, "add", "-A")
    git(tmp_path, "commit", "-qm", "code")
    return tmp_path


def write_results(root: Path, name: str, value: float, commit: str | None, dirty: bool = False) -> None:
    block = {"commit": commit, "dirty": dirty} if commit else None
    payload = {"results": {"rows": [{"seed": 0, "accuracy": value}, {"seed": 1, "accuracy": 0.5}],
                           "above_0.9": 0.25}, "code": ["deqkit"]}
    if block:
        payload["provenance"] = block
    (root / "results").mkdir(exist_ok=True)
    (root / "results" / name).write_text(json.dumps(payload))


def statuses(root: Path, text: str) -> list[str]:
    doc = root / "doc.md"
    doc.write_text(text)
    return [f.status for f in check([doc], root)]


def test_a_printed_value_matches_its_results_to_the_printed_precision(repo):
    write_results(repo, "r.json", 0.8555, git(repo, "rev-parse", "HEAD"))
    text = ("accuracy 0.86 <!-- results: results/r.json#results.rows[seed=0].accuracy -->, "
            "0.856 <!-- results: results/r.json#results.rows.0.accuracy --> and 25 % "
            "<!-- results: results/r.json#results.above_0.9 scale=100 -->\n")
    assert statuses(repo, text) == ["ok", "ok", "ok"]
    assert statuses(repo, "accuracy 0.92 <!-- results: results/r.json#results.rows[seed=0].accuracy -->") == [
        "mismatch"]
    assert statuses(repo, "0.8555 <!-- results: results/r.json#results.rows[seed=1].accuracy -->") == ["mismatch"]


def test_a_section_names_its_file_once(repo):
    write_results(repo, "r.json", 0.8555, git(repo, "rev-parse", "HEAD"))
    text = ("## Toy\n<!-- results: results/r.json -->\n| 0.856 <!-- results: #results.rows.0.accuracy --> |\n"
            "## Next\n0.5 <!-- results: #results.rows.1.accuracy -->\n")
    assert statuses(repo, text) == ["ok", "missing"]  # the next heading ends the section


def test_missing_file_or_path_is_an_error(repo):
    write_results(repo, "r.json", 0.8555, git(repo, "rev-parse", "HEAD"))
    assert statuses(repo, "0.5 <!-- results: results/gone.json#results.x -->") == ["missing"]
    assert statuses(repo, "0.5 <!-- results: results/r.json#results.rows[seed=7].accuracy -->") == ["missing"]
    assert statuses(repo, "0.5 <!-- results: results/r.json#results.nope -->") == ["missing"]
    (repo / "doc.md").write_text("0.5 <!-- results: results/gone.json#results.x -->\n")
    assert main(["--check", "--root", str(repo), str(repo / "doc.md")]) == 1


def test_code_changed_after_the_measurement_is_stale(repo, capsys):
    measured = git(repo, "rev-parse", "HEAD")
    write_results(repo, "r.json", 0.8555, measured)
    (repo / "doc.md").write_text("0.86 <!-- results: results/r.json#results.rows.0.accuracy -->\n")
    (repo / "README.md").write_text("docs only\n")  # a change outside the measured code keeps it fresh
    git(repo, "add", "README.md")
    git(repo, "commit", "-qm", "docs")
    assert [f.status for f in check([repo / "doc.md"], repo)] == ["ok"]
    (repo / "deqkit" / "solver.py").write_text("STEPS = 2\n")
    git(repo, "commit", "-qam", "code change")
    [finding] = check([repo / "doc.md"], repo)
    assert finding.status == "stale" and measured[:12] in finding.detail
    assert main(["--check", "--root", str(repo), str(repo / "doc.md")]) == 0  # reported, not an error
    assert main(["--check", "--strict", "--root", str(repo), str(repo / "doc.md")]) == 1
    assert "1 stale" in capsys.readouterr().out


def test_scores_of_weights_trained_before_a_code_change_are_stale(repo):
    """A file of scores is as fresh as the older of its scoring and the training that made the weights."""
    trained = git(repo, "rev-parse", "HEAD")
    (repo / "deqkit" / "solver.py").write_text("STEPS = 2\n")
    git(repo, "commit", "-qam", "code change")
    scored = git(repo, "rev-parse", "HEAD")
    (repo / "results").mkdir()
    report = {"provenance": {"commit": scored}, "trained_by": {"commit": trained}, "metrics": {"acc": 0.5}}
    (repo / "results" / "eval.json").write_text(json.dumps(report))
    runs = {"benchmark": "score_runs", "provenance": {"commit": scored},
            "results": {"runs": {"a": {"provenance": {"commit": scored}, "acc": 0.5},
                                 "b": {"provenance": None, "acc": 0.5}}}}
    (repo / "results" / "runs.json").write_text(json.dumps(runs))
    (repo / "doc.md").write_text("0.5 <!-- results: results/eval.json#metrics.acc --> "
                                 "0.5 <!-- results: results/runs.json#results.runs.a.acc -->\n")
    eval_finding, runs_finding = check([repo / "doc.md"], repo)
    assert eval_finding.status == "stale" and f"the checkpoint trained at {trained[:12]}" in eval_finding.detail
    assert "deqkit/solver.py" in eval_finding.detail  # which files changed since
    assert runs_finding.status == "no provenance" and "run b trained" in runs_finding.detail
    report["trained_by"] = {"commit": scored}
    (repo / "results" / "eval.json").write_text(json.dumps(report))
    assert [f.status for f in check([repo / "doc.md"], repo)][0] == "ok"


def test_results_without_provenance_or_measured_on_a_dirty_tree(repo):
    write_results(repo, "old.json", 0.8555, None)
    write_results(repo, "dirty.json", 0.8555, git(repo, "rev-parse", "HEAD"), dirty=True)
    text = ("0.86 <!-- results: results/old.json#results.rows.0.accuracy --> "
            "0.86 <!-- results: results/dirty.json#results.rows.0.accuracy -->")
    assert statuses(repo, text) == ["no provenance", "dirty"]
    assert main(["--root", str(repo), str(repo / "doc.md")]) == 0
    assert main(["--strict", "--root", str(repo), str(repo / "doc.md")]) == 1


def test_markers_take_the_number_just_before_them_outside_code():
    text = ("```\n0.1 <!-- results: a.json#x -->\n```\n"
            "from 1/3 to **0.92** <!-- results: a.json#y --> (`0.7`) and −1.5e-3 <!-- results: a.json#z -->\n"
            "write `0.5 <!-- results: a.json#shown -->` to mark a number\n")
    assert [(line, printed, path) for line, printed, _, path, _ in markers(text)] == [(4, "0.92", "y"),
                                                                                      (4, "−1.5e-3", "z")]
    assert matches("−1.5e-3", -0.00149) and not matches("−1.5e-3", -0.0016)
    assert matches("16", 16.4) and not matches("16", 16.6) and not matches("0.5", True)
    assert unmarked_numbers("a 0.92 <!-- results: a.json#y --> b 0.68, version 0.1.0, `1.5`\n") == [(1, "0.68", None)]


def test_lookup_walks_keys_indices_and_selections():
    data = {"rows": [{"tol": 1e-3, "nfe": 4}, {"tol": 1e-5, "nfe": 9}], "above_0.9": {"n": 2},
            "test": {"iters=5 (as trained)": {"fg_ari": 0.76}}}
    assert lookup(data, "test.iters=5 (as trained).fg_ari") == 0.76
    [(_, _, _, path, opts)] = markers("0.76 <!-- results: a.json#test.iters=5 (as trained).fg_ari scale=1 -->")
    assert (path, opts) == ("test.iters=5 (as trained).fg_ari", {"scale": "1"})
    assert lookup(data, "rows[tol=1e-5].nfe") == 9
    assert lookup(data, "rows.-1.nfe") == 9
    assert lookup(data, "above_0.9.n") == 2
    with pytest.raises(KeyError):
        lookup(data, "rows[tol=1].nfe")


def test_the_real_docs_have_no_missing_or_differing_numbers():
    """README.md and docs/*.md: every marker's file and path exist and the printed value is the measured one.
    Staleness is reported, not failed on (a fresh clone's old results have no provenance yet)."""
    proc = subprocess.run([sys.executable, "-m", "benchmarks.docs", "--check"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT)})
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    assert "match their results file" in proc.stdout


def test_a_measured_by_line_dates_its_sections_unmarked_numbers_until_the_next_heading():
    text = ("intro 0.5\n## A\n<!-- measured by: abcdef1 -->\nFG-ARI 0.76 and 0.60 <!-- results: r.json#x -->\n"
            "```\n0.9\n```\n## B\nMSE 0.015\n")
    assert unmarked_numbers(text) == [(1, "0.5", None), (4, "0.76", "abcdef1"), (9, "0.015", None)]
    assert unmarked_numbers("<!-- generated by `x` -->\n| 0.5 | 0.7 |\n") == []  # the generator reads results
    assert len(unmarked_numbers("mark a page with `<!-- generated by x -->`: 0.5\n")) == 1


def test_a_dating_commit_must_be_in_the_current_history(repo, capsys):
    head = git(repo, "rev-parse", "HEAD")
    doc = repo / "doc.md"
    doc.write_text(f"## A\n<!-- measured by: {head[:12]} -->\n0.5\n")
    assert check_dates([doc], repo) == []
    assert main(["--check", "--root", str(repo), str(doc)]) == 0
    assert "1 dated by their section" in capsys.readouterr().out
    doc.write_text("## A\n<!-- measured by: 0123456789ab -->\n0.5\n")
    [finding] = check_dates([doc], repo)
    assert finding.status == "missing" and finding.line == 2
    assert main(["--check", "--root", str(repo), str(doc)]) == 1


def test_date_sections_names_the_newest_commit_of_the_numbered_lines(repo):
    doc = repo / "doc.md"
    doc.write_text("# Page\n0.25 first\n```\n# a comment, not a heading\n```\n## Later\nno numbers\n")
    git(repo, "add", "doc.md")
    git(repo, "commit", "-qm", "first")
    first = git(repo, "rev-parse", "HEAD")
    doc.write_text("# Page\n0.25 first\n```\n# a comment, not a heading\n```\n## Later\nnow 0.75\n")
    git(repo, "commit", "-qam", "second")
    second = git(repo, "rev-parse", "HEAD")
    assert date_sections(doc, repo) == 2
    assert doc.read_text() == (f"# Page\n\n<!-- measured by: {first[:12]} -->\n0.25 first\n```\n# a comment, not a "
                               f"heading\n```\n## Later\n\n"
                               f"<!-- measured by: {second[:12]} -->\nnow 0.75\n")
    assert date_sections(doc, repo) == 0  # nothing undated is left
    git(repo, "commit", "-qam", "dated")
    doc.write_text(doc.read_text() + "## New\nuncommitted 0.5\n")
    assert date_sections(doc, repo) == 0  # a number not yet committed has no date
    assert unmarked_numbers(doc.read_text())[-1] == (13, "0.5", None)
