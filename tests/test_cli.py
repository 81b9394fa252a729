"""The deqkit command line, end to end on the toy application's smoke preset.

In-process through Typer's CliRunner where possible; real subprocesses for signals (SIGKILL, SIGINT)
and for torchrun.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch
from safetensors import safe_open
from typer.testing import CliRunner

from deqkit.cli import app
from deqkit.train.checkpoint import load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "examples" / "toy_deq")
QUICK = ["--preset", "smoke", "--set", "train.spectral_iters=2", "--set", "train.num_threads=1", "-q"]
runner = CliRunner()


def invoke(*args: str):
    return runner.invoke(app, [str(a) for a in args])


def one_line_error(result, code: int, contains: str) -> str:
    assert result.exit_code == code, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: ") and contains in lines[0], result.stderr
    return lines[0]


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """One finished smoke run shared by the read-only tests below."""
    out = tmp_path_factory.mktemp("cli") / ("a-run-directory-whose-path-is-longer-than-eighty-columns-" * 2)
    result = runner.invoke(app, ["train", TOY, *QUICK, "--set", "train.image_every=10", "--out", str(out)],
                           env={"COLUMNS": "80"})
    assert result.exit_code == 0, result.output
    # in 80 columns the paths are printed whole, each on its own line, never cut by a table column
    lines = result.stdout.splitlines()
    assert "training finished" in result.stdout and len(str(out)) > 80
    assert f"checkpoint:    {out / 'checkpoints' / 'last.safetensors'}" in lines
    assert f"run directory: {out}" in lines
    return out


def test_train_writes_the_run_directory(run):
    config = json.loads((run / "config.json").read_text())
    assert config["app"] == "toy_deq" and config["preset"] == "smoke" and config["config"]["train"]["steps"] == 20
    records = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records] == [5, 10, 15, 20]
    first = records[0]
    for key in ("time", "loss", "lr", "grad_norm", "metrics", "skipped_steps"):
        assert key in first
    assert {"nfe", "residual", "converged", "spectral_norm"} <= set(first["solver"]["fp"])
    assert records[-1]["eval"]["split"] == "val" and 0 <= records[-1]["eval"]["accuracy"] <= 1
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == [
        "last.safetensors", "step_0000010.safetensors", "step_0000020.safetensors"]
    assert {"step_0000010.png", "step_0000020.png"} <= {p.name for p in (run / "images").iterdir()}
    assert load_checkpoint(run / "checkpoints" / "last.safetensors", app="toy_deq").step == 20


def test_existing_run_is_not_overwritten_without_resume(run):
    before = (run / "checkpoints" / "last.safetensors").read_bytes()
    one_line_error(invoke("train", TOY, *QUICK, "--out", run), 2, "already holds a run")
    assert (run / "checkpoints" / "last.safetensors").read_bytes() == before


def test_resume_continues_from_the_last_checkpoint(run, tmp_path):
    import shutil

    copy = tmp_path / "copy"
    shutil.copytree(run, copy)
    result = invoke("train", TOY, "--resume", "--out", copy, "--set", "train.steps=25", "-q")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(copy / "checkpoints" / "last.safetensors").step == 25
    assert [json.loads(x)["step"] for x in (copy / "metrics.jsonl").read_text().splitlines()][-1] == 25
    one_line_error(invoke("train", TOY, "--resume", "--out", tmp_path / "empty"), 2, "nothing to resume")
    one_line_error(invoke("train", TOY, "--resume", "--preset", "smoke", "--out", copy), 2, "--preset")


def test_unknown_set_key_and_bad_value_fail_at_once(tmp_path):
    line = one_line_error(invoke("train", TOY, *QUICK, "--set", "train.lrr=1", "--out", tmp_path / "x"), 2,
                          "unknown config key 'train.lrr'; valid keys:")
    assert "train.lr," in line and "hidden" in line
    one_line_error(invoke("train", TOY, *QUICK, "--set", "hidden=big", "--out", tmp_path / "x"), 2,
                   "bad value 'big' for config key 'hidden': expected int")
    one_line_error(invoke("train", TOY, "--preset", "nope", "--out", tmp_path / "x"), 2, "valid presets: smoke, cpu")
    one_line_error(invoke("train", TOY, *QUICK, "--device", "cuda", "--out", tmp_path / "x"), 2,
                   "torch.cuda.is_available() is False")
    one_line_error(invoke("train", "no_such_app"), 2, "no application 'no_such_app'")
    assert not (tmp_path / "x").exists()


def test_a_bare_name_skips_a_folder_of_that_name_that_is_no_application(tmp_path, monkeypatch):
    """`deqkit train toy_deq --out toy_deq` leaves a run folder named like the application; the next
    `deqkit train toy_deq` in that directory must still find the application, and a path (not a bare name)
    to a folder that is no application is refused in one line."""
    from deqkit.train.application import find_application_dir

    (tmp_path / "toy_deq").mkdir()
    monkeypatch.chdir(tmp_path)
    assert find_application_dir("toy_deq") == Path(TOY).resolve()
    one_line_error(invoke("train", "./toy_deq"), 2, "./toy_deq is not an application folder")


def test_eval_prints_metrics_as_json_and_table(run):
    result = invoke("eval", run / "checkpoints" / "last.safetensors", "--json")
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["split"] == "test" and report["step"] == 20 and report["metrics"]["samples"] == 64
    assert 0 <= report["metrics"]["accuracy"] <= 1
    table = invoke("eval", run / "checkpoints" / "last.safetensors", "--split", "val")
    assert table.exit_code == 0 and "accuracy" in table.stdout
    one_line_error(invoke("eval", run / "checkpoints" / "last.safetensors", "--split", "dev"), 2, "no split 'dev'")


def test_diagnose_reports_json_and_plots(run, tmp_path):
    result = invoke("diagnose", run / "checkpoints" / "last.safetensors", "--batches", "1",
                    "--out", tmp_path / "d.json", "--plots", tmp_path / "plots")
    assert result.exit_code == 0, result.output
    report = json.loads((tmp_path / "d.json").read_text())
    fp = report["fixed_points"]["fp"]
    assert report["batches"] == 1 and report["samples"] == 32 and -1 <= report["gradient_cosine"] <= 1
    assert fp["converged"] == 1.0 and fp["residual_max"] < 1e-4 * 10
    assert 0 < fp["spectral_radius_max"] <= fp["spectral_norm_max"] * (1 + 1e-3)
    assert len(fp["residual_curve_mean"]) >= 2 and fp["residual_curve_mean"][-1] <= fp["residual_curve_mean"][0]
    assert {"residuals.png", "spectral_norm.png"} <= {p.name for p in (tmp_path / "plots").iterdir()}
    assert "cosine" in result.stdout


def test_eval_and_diagnose_set_changes_the_solve_not_the_weights(run, tmp_path):
    ckpt = run / "checkpoints" / "last.safetensors"
    default = invoke("diagnose", ckpt, "--batches", "1", "--out", tmp_path / "default.json")
    capped = invoke("diagnose", ckpt, "--batches", "1", "--out", tmp_path / "capped.json", "--set", "max_iter=2")
    assert default.exit_code == 0 and capped.exit_code == 0, (default.output, capped.output)
    nfe = {name: json.loads((tmp_path / f"{name}.json").read_text())["fixed_points"]["fp"]["nfe"]
           for name in ("default", "capped")}
    assert nfe["capped"] <= 2 < nfe["default"]
    assert invoke("eval", ckpt, "--json", "--set", "max_iter=2").exit_code == 0
    one_line_error(invoke("eval", ckpt, "--set", "hidden=9"), 2, "--set hidden=9 changes the model")
    one_line_error(invoke("eval", ckpt, "--set", "no_such_key=1"), 2, "no_such_key")


def test_bad_checkpoints_give_one_line_errors_and_change_nothing(run, tmp_path):
    good = (run / "checkpoints" / "last.safetensors").read_bytes()
    truncated = tmp_path / "truncated.safetensors"
    truncated.write_bytes(good[: len(good) // 2])
    foreign = tmp_path / "foreign.safetensors"
    from safetensors.torch import save_file
    import torch

    save_file({"x": torch.zeros(1)}, str(foreign))
    for command in ("eval", "diagnose"):
        one_line_error(invoke(command, truncated), 1, "truncated or corrupt")
        one_line_error(invoke(command, foreign), 1, "not a deqkit checkpoint")
        one_line_error(invoke(command, tmp_path / "missing.safetensors"), 1, "not found")
    assert truncated.read_bytes() == good[: len(good) // 2]
    # a run directory whose last checkpoint is corrupt: --resume refuses and leaves everything as it was
    import shutil

    broken = tmp_path / "broken"
    shutil.copytree(run, broken)
    (broken / "checkpoints" / "last.safetensors").write_bytes(good[:100])
    snapshot = {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()}
    one_line_error(invoke("train", TOY, "--resume", "--out", broken), 1, "truncated or corrupt")
    assert snapshot == {p: p.read_bytes() for p in broken.rglob("*") if p.is_file()}


def test_resume_with_another_applications_checkpoint_is_refused(run, tmp_path):
    other = tmp_path / "other_app"
    other.mkdir()
    (other / "app.py").write_text(
        "import dataclasses\nfrom deqkit.train.application import load_application\n"
        f"APP = dataclasses.replace(load_application({TOY!r}), name='other_app')\n")
    one_line_error(invoke("train", other, "--resume", "--out", run), 1,
                   "is a checkpoint of application 'toy_deq', not 'other_app'")


def test_apps_lists_applications_and_presets():
    from deqkit.train.application import discover

    result = runner.invoke(app, ["apps"], env={"COLUMNS": "80"})
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert "toy_deq  (presets cpu, smoke)" in lines
    # in 80 columns names and folders are whole lines; descriptions wrap within the width
    for path, found in discover():
        if not isinstance(found, str):
            assert f"  folder: {path}" in lines and any(line.startswith(found.name + "  (") for line in lines)
    descriptions = [line for line in lines if line.startswith("  ") and not line.startswith("  folder:")]
    assert descriptions and all(len(line) <= 80 for line in descriptions)


def test_usage_errors_are_one_line_with_exit_2():
    one_line_error(invoke("train", TOY, "--no-such-option"), 2, "No such option: --no-such-option")
    one_line_error(invoke("eval"), 2, "Missing argument 'CHECKPOINT'")
    line = one_line_error(invoke("eval", "x.safetensors", "--batches", "many"), 2, "'--batches'")
    assert "deqkit eval --help" in line
    one_line_error(invoke("no_such_command"), 2, "No such command")


def test_flags_show_no_value_placeholder_in_help():
    for command in ("train", "eval", "diagnose", "bench"):
        result = invoke(command, "--help")
        assert result.exit_code == 0 and "--help" in result.stdout
        assert "<bool>" not in result.stdout, command


def test_eval_and_diagnose_print_json_with_json_and_write_it_with_out(run, tmp_path):
    ckpt = run / "checkpoints" / "last.safetensors"
    printed = invoke("eval", ckpt, "--batches", "1", "--json", "--out", tmp_path / "e.json")
    assert printed.exit_code == 0, printed.output
    assert json.loads(printed.stdout) == json.loads((tmp_path / "e.json").read_text())
    table = invoke("eval", ckpt, "--batches", "1", "--out", tmp_path / "e2.json")
    assert table.exit_code == 0 and "accuracy" in table.stdout and not table.stdout.lstrip().startswith("{")
    written = json.loads((tmp_path / "e2.json").read_text())
    assert written["metrics"]["samples"] == 32
    # which code scored it, and which code trained it (the checkpoint's own block), for a results file
    with safe_open(str(ckpt), framework="pt") as handle:
        assert written["trained_by"] == json.loads(handle.metadata()["provenance"])
    assert set(written["provenance"]) >= {"commit", "dirty", "versions", "time"}
    report = invoke("diagnose", ckpt, "--batches", "1", "--json")
    assert report.exit_code == 0, report.output
    assert json.loads(report.stdout)["trained_by"]["versions"]["torch"] == torch.__version__
    fp = json.loads(report.stdout)["fixed_points"]["fp"]
    assert fp["tol"] == 1e-4 and fp["stop_mode"] == "rel" and set(fp["readings"]) >= {"converged", "spectral_radius"}
    one_line_error(invoke("eval", ckpt, "--out", "/dev/null/x.json"), 2, "cannot write --out")


def test_help_of_every_command_is_complete():
    result = invoke("--help")
    assert result.exit_code == 0
    for command in ("train", "eval", "diagnose", "apps", "bench"):
        assert command in result.stdout
    train_help = invoke("train", "--help").stdout
    for option in ("--preset", "--set", "--out", "--resume", "--device", "--seed"):
        assert option in train_help
    for command in ("eval", "diagnose", "apps", "bench"):
        assert invoke(command, "--help").exit_code == 0


def test_bench_measures_data_and_training_rates():
    result = invoke("bench", TOY, "--preset", "smoke", "--steps", "3", "--threads", "1", "--json")
    assert result.exit_code == 0, result.output
    (row,) = json.loads(result.stdout)
    assert row["threads"] == 1 and row["data_steps_per_s"] > row["train_steps_per_s"] > 0


# ----------------------------------------------------------------------------------------- subprocesses


def _start(out: Path) -> subprocess.Popen:
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    args = [sys.executable, "-m", "deqkit", "train", TOY, "--preset", "smoke", "--out", str(out), "-q",
            "--set", "train.steps=100000", "--set", "train.ckpt_every=2", "--set", "train.eval_every=0",
            "--set", "train.spectral_iters=0", "--set", "train.num_threads=1"]
    return subprocess.Popen(args, env=env, cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def _wait_for(path: Path, proc: subprocess.Popen, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while not path.exists():
        assert proc.poll() is None, proc.communicate()
        assert time.monotonic() < deadline, "no checkpoint appeared"
        time.sleep(0.05)


def test_sigkill_leaves_a_loadable_checkpoint_and_resume_continues(tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    last = out / "checkpoints" / "last.safetensors"
    _wait_for(last, proc)
    time.sleep(0.4)  # a checkpoint is written every 2 steps: the kill lands during training or a write
    proc.kill()
    proc.wait()
    step = load_checkpoint(last, app="toy_deq").step
    assert step >= 2
    result = invoke("train", TOY, "--resume", "--out", out, "--set", f"train.steps={step + 3}", "-q")
    assert result.exit_code == 0, result.output
    assert load_checkpoint(last).step == step + 3


def test_sigint_saves_a_checkpoint_and_exits_cleanly(tmp_path):
    out = tmp_path / "run"
    proc = _start(out)
    _wait_for(out / "checkpoints" / "last.safetensors", proc)
    proc.send_signal(signal.SIGINT)
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    (line,) = [x for x in stderr.splitlines() if x.strip()]
    assert line.startswith("error: interrupted at step ") and "continue with --resume" in line
    step = int(line.split("interrupted at step ")[1].split(";")[0])
    assert load_checkpoint(out / "checkpoints" / "last.safetensors").step == step


@pytest.mark.slow
def test_torchrun_two_processes(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    out = tmp_path / "run"
    proc = subprocess.run([sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node", "2",
                           "-m", "deqkit", "train", TOY, "--preset", "smoke", "--out", str(out), "-q"],
                          env=env, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.count("training finished") == 1  # rank 0 only
    ckpt = load_checkpoint(out / "checkpoints" / "last.safetensors")
    assert ckpt.step == 20 and ckpt.state["world"] == 2
