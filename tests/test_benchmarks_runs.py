"""Benchmarks that read finished run directories: ``score_runs.py`` scores them as ``deqkit eval`` does and
keeps the training record; ``spectral_estimate.py`` checks the logged ‖J‖ against the dense Jacobian."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from deqkit.train import load_application, train

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def smoke_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("runs") / "sa_smoke"
    app = load_application("applications/slot_attention")
    train(app, app.make_config("smoke", ["train.seed=3"]), out, preset="smoke")
    return out


def run(script: str, *args: str) -> subprocess.CompletedProcess:
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    return subprocess.run([sys.executable, str(ROOT / "benchmarks" / script), *args], cwd=ROOT, env=env,
                          capture_output=True, text=True, timeout=300)


def test_score_runs_gives_deqkit_evals_numbers_and_the_training_provenance(smoke_run, tmp_path):
    out = tmp_path / "scores.json"
    proc = run("score_runs.py", str(smoke_run), "--variant", "more:iters=6", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    results = json.loads(out.read_text())["results"]
    record = results["runs"]["sa_smoke"]
    ckpt = smoke_run / "checkpoints" / "last.safetensors"
    for variant, sets in (("as_trained", []), ("more", ["--set", "iters=6"])):
        cli = subprocess.run([sys.executable, "-m", "deqkit", "eval", str(ckpt), "--json", *sets], cwd=ROOT,
                             capture_output=True, text=True, timeout=300)
        assert cli.returncode == 0, cli.stderr[-2000:]
        assert record["scores"][variant] == pytest.approx(json.loads(cli.stdout)["metrics"], rel=1e-6)
    assert record["scores"]["more"] != record["scores"]["as_trained"]
    assert record["app"] == "slot_attention" and record["steps"] == 6
    assert record["provenance"]["argv"] and [p["step"] for p in record["val_curve"]] == [3, 6]
    assert results["summary"]["as_trained"]["fg_ari"]["values"] == [record["scores"]["as_trained"]["fg_ari"]]
    assert results["groups"] == {"sa_smoke": results["summary"]}


def test_the_logged_spectral_norm_is_a_lower_bound_that_50_steps_make_exact(smoke_run, tmp_path):
    out = tmp_path / "spectral.json"
    proc = run("spectral_estimate.py", str(smoke_run), "--images", "3", "--json", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(out.read_text())["results"]["sa_smoke"]
    assert result["logged_iters"] == 2 and result["state_dim"] == 3 * 16
    assert all(r <= 1 + 1e-6 for r in result["logged_over_exact"]["values"])
    assert result["lanczos_50_over_exact_min"] == pytest.approx(1.0, abs=1e-4)


def test_score_runs_groups_runs_by_the_name_before_their_seed_suffix():
    sys.path.insert(0, str(ROOT))
    from benchmarks.score_runs import seed_groups

    assert seed_groups(["IN_s0", "VN_s0", "IN_s12", "neumann-s1", "sa_small", "sa_s"]) == {
        "IN": ["IN_s0", "IN_s12"], "VN": ["VN_s0"], "neumann": ["neumann-s1"], "sa_small": ["sa_small"],
        "sa_s": ["sa_s"]}


def test_score_runs_summarises_runs_of_different_metrics_over_the_metrics_they_share():
    sys.path.insert(0, str(ROOT))
    from benchmarks.score_runs import scored_metrics, summarise

    runs = {"sets_s0": {"scores": {"as_trained": {"loss": 1.0, "samples": 8}}},
            "sets_s1": {"scores": {"as_trained": {"loss": 3.0, "samples": 8}}},
            "props_s0": {"scores": {"as_trained": {"ap_inf": 0.5, "samples": 8}}}}
    assert scored_metrics(runs.values()) == ["loss", "ap_inf"]
    assert summarise(runs, list(runs), ["as_trained"]) == {"as_trained": {}}
    group = summarise(runs, ["sets_s0", "sets_s1"], ["as_trained"])["as_trained"]
    assert list(group) == ["loss"] and group["loss"]["mean"] == 2.0
