"""Hostile but fair inputs: each is one line ``error: ...`` with exit 2 (usage) or 1 (other), never a traceback,
a hang or a huge allocation; and no input loses or poisons a run.

One table, one row per input: add the next case as one line. Checkpoints are crafted by rewriting the
metadata (or tensors) of one real smoke run of the toy application, shared by the module.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import struct
import subprocess
import sys
import time
import zlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save as st_save
from typer.testing import CliRunner

from deqkit.cli import app
from deqkit.train.checkpoint import _data_section, load_checkpoint

ROOT = Path(__file__).resolve().parents[1]
TOY = str(ROOT / "examples" / "toy_deq")
SLATE = str(ROOT / "applications" / "slate")
FAST = ["--set", "train.eval_every=0", "--set", "train.spectral_iters=0", "--set", "train.num_threads=1", "-q"]
SMOKE = ["--preset", "smoke", "--set", "train.steps=4", "--set", "train.ckpt_every=2", *FAST]
RESUME = ["train", TOY, "--resume", "-q", "--out"]  # + a Run
runner = CliRunner()


def invoke(*args: Any):
    return runner.invoke(app, [str(a) for a in args])


def error_line(result) -> str:
    """The single line of stderr that is not a warning; fails if there is any other, or a traceback."""
    lines = [line for line in result.stderr.strip().splitlines() if not line.startswith("warning: ")]
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr + repr(result.exception)
    return lines[0]


# ------------------------------------------------------------------------------------------ crafting


@pytest.fixture(scope="module")
def smoke(tmp_path_factory) -> Path:
    """One finished 4-step smoke run of the toy application (checkpoints at steps 2 and 4)."""
    out = tmp_path_factory.mktemp("hostile") / "run"
    result = invoke("train", TOY, *SMOKE, "--out", out)
    assert result.exit_code == 0, result.output
    return out


def rewrite(source: Path, target: Path, config: dict[str, Any] | None = None, meta: dict[str, str] | None = None,
            tensors: Callable[[dict[str, torch.Tensor]], None] | None = None) -> Path:
    """Copy checkpoint ``source`` to ``target`` with config keys (dotted), raw metadata entries or tensors
    changed, and a valid checksum: what a careful attacker would write."""
    with safe_open(str(source), framework="pt") as handle:
        metadata = dict(handle.metadata())
        data = {key: handle.get_tensor(key) for key in handle.keys()}
    if config:
        stored = json.loads(metadata["config"])
        for dotted, value in config.items():
            node = stored
            *parents, last = dotted.split(".")
            for part in parents:
                node = node[part]
            node[last] = value
        metadata["config"] = json.dumps(stored)
    metadata.update(meta or {})
    if tensors is not None:
        tensors(data)
    metadata.pop("sha256", None)
    metadata["sha256"] = hashlib.sha256(_data_section(st_save(data, metadata=metadata))).hexdigest()
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(st_save(data, metadata=metadata))
    return target


def all_nan(data: dict[str, torch.Tensor]) -> None:
    for key in data:
        if key.startswith("model/") and data[key].is_floating_point():
            data[key] = torch.full_like(data[key], float("nan"))


@dataclass
class Ckpt:
    """A crafted copy of the smoke run's last checkpoint."""

    config: dict[str, Any] = field(default_factory=dict)
    meta: dict[str, str] = field(default_factory=dict)
    tensors: Callable[[dict[str, torch.Tensor]], None] | None = None

    def make(self, smoke: Path, tmp: Path) -> Path:
        return rewrite(smoke / "checkpoints" / "last.safetensors", tmp / "crafted.safetensors", self.config,
                       self.meta, self.tensors)


@dataclass
class Run(Ckpt):
    """A copy of the smoke run directory whose last checkpoint is crafted."""

    def make(self, smoke: Path, tmp: Path) -> Path:
        copy = tmp / "run"
        shutil.copytree(smoke, copy)
        rewrite(smoke / "checkpoints" / "last.safetensors", copy / "checkpoints" / "last.safetensors",
                self.config, self.meta, self.tensors)
        return copy


@dataclass
class Bomb:
    """``folder=`` a folder of ten 48 KB PNGs whose headers declare 20000x20000 pixels."""

    def make(self, smoke: Path, tmp: Path) -> str:
        folder = tmp / "bombs"
        folder.mkdir()
        def chunk(kind: bytes, body: bytes) -> bytes:
            return struct.pack(">I", len(body)) + kind + body + struct.pack(">I", zlib.crc32(kind + body))
        header = struct.pack(">IIBBBBB", 20000, 20000, 8, 0, 0, 0, 0)  # 8-bit greyscale
        rows = zlib.compress(bytes(2_500 * 20_001))  # the first rows only: ~48 KB on disk
        png = b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", rows) + chunk(b"IEND", b"")
        for i in range(10):
            (folder / f"bomb{i}.png").write_bytes(png)
        return f"folder={folder}"


@dataclass
class UnderAFile:
    """A path whose parent is a file."""

    def make(self, smoke: Path, tmp: Path) -> Path:
        (tmp / "a_file").write_text("not a folder")
        return tmp / "a_file" / "run"


# (name, command line, exit status, what the error line says)
CASES = [
    # checkpoint metadata
    ("optimizer is a JSON list", [*RESUME, Run(meta={"optimizer": "[]"})], 1, "optimizer"),
    ("state is a JSON list", [*RESUME, Run(meta={"state": "[]"})], 1, "state"),
    ("state with a bad counter", [*RESUME, Run(meta={"state": '{"skipped_steps": "many"}'})], 1, "state"),
    ("config is a JSON list", ["eval", Ckpt(meta={"config": "[]"})], 1, "config"),
    ("step is negative", ["eval", Ckpt(meta={"step": "-3"})], 1, "negative"),
    ("eval_size = -1", ["eval", Ckpt(config={"eval_size": -1})], 1, "eval_size"),
    ("eval_size = 10**10", ["eval", Ckpt(config={"eval_size": 10**10})], 1, "eval_size"),
    ("eval_size = 10**8 for --batches 2", ["diagnose", Ckpt(config={"eval_size": 10**8}), "--batches", "2"], 1,
     "eval_size"),
    ("batch_size = 10**9", ["eval", Ckpt(config={"train.batch_size": 10**9})], 1, "batch_size"),
    ("hidden = 10**9", ["eval", Ckpt(config={"hidden": 10**9})], 1, "does not fit"),
    ("hidden = 20000", ["diagnose", Ckpt(config={"hidden": 20000})], 1, "does not fit"),
    ("hidden = 20000 on --resume", [*RESUME, Run(config={"hidden": 20000})], 1, "does not fit"),
    ("stored endless solve", ["eval", Ckpt(config={"tol": 1e-30, "max_iter": 10**9})], 1, "max_iter"),
    ("stored lr = NaN", [*RESUME, Run(meta={"config": '{"train": {"lr": NaN}}'})], 1, "train.lr"),
    ("weights are NaN on --resume", [*RESUME, Run(tensors=all_nan)], 1, "non-finite weights"),
    # command line
    ("--set endless solve", ["eval", Ckpt(), "--set", "tol=1e-30", "--set", "max_iter=1000000000"], 2, "max_iter"),
    ("train.lr = nan", ["train", TOY, *SMOKE, "--set", "train.lr=nan", "--out", "unused"], 2, "train.lr"),
    ("train.lr = inf", ["train", TOY, *SMOKE, "--set", "train.lr=inf", "--out", "unused"], 2, "train.lr"),
    ("train.lr = 1e38", ["train", TOY, *SMOKE, "--set", "train.lr=1e38", "--out", "unused"], 2, "train.lr"),
    ("train.grad_clip = nan", ["train", TOY, *SMOKE, "--set", "train.grad_clip=nan", "--out", "unused"], 2,
     "grad_clip"),
    ("hidden = -4", ["train", TOY, *SMOKE, "--set", "hidden=-4", "--out", "unused"], 2, "hidden"),
    ("--out /dev/null", ["train", TOY, *SMOKE, "--out", "/dev/null"], 2, "cannot use /dev/null"),
    ("--out /proc/x", ["train", TOY, *SMOKE, "--out", "/proc/x"], 2, "cannot use /proc/x"),
    ("--out /sys/x (permission)", ["train", TOY, *SMOKE, "--out", "/sys/x"], 2, "cannot use /sys/x"),
    ("--out under a file", ["train", TOY, *SMOKE, "--out", UnderAFile()], 2, "Not a directory"),
    ("PNG declaring 20000x20000", ["train", SLATE, "--preset", "smoke", *FAST, "--set", Bomb(), "--out", "unused"],
     1, "too large to decode safely"),
]


@pytest.mark.parametrize("name, argv, code, says", CASES, ids=[c[0] for c in CASES])
def test_hostile_input_is_one_line(name, argv, code, says, smoke, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    args = [item.make(smoke, tmp_path) if hasattr(item, "make") else item for item in argv]
    started = time.perf_counter()
    result = invoke(*args)
    line = error_line(result)
    assert result.exit_code == code, (result.exit_code, line)
    assert says in line, line
    assert time.perf_counter() - started < 60


# ----------------------------------------------------------------------------------- non-finite weights


def test_eval_and_diagnose_of_nan_weights_warn_and_report_null(smoke, tmp_path):
    ckpt = Ckpt(tensors=all_nan).make(smoke, tmp_path)
    result = invoke("eval", ckpt, "--json")
    assert result.exit_code == 0, result.output
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("warning: ") and "non-finite weights" in warning
    report = tmp_path / "report.json"
    result = invoke("diagnose", ckpt, "--batches", "1", "--out", report)
    assert result.exit_code == 0, result.output + repr(result.exception)
    assert "non-finite weights" in result.stderr
    fp = json.loads(report.read_text())["fixed_points"]["fp"]
    assert fp["spectral_norm_mean"] is None and fp["spectral_radius_mean"] is None


# ------------------------------------------------------------------------------------- lost or poisoned


def _tensors_finite(path: Path) -> bool:
    ckpt = load_checkpoint(path)
    return all(bool(torch.isfinite(v).all()) for v in ckpt.model.values() if v.is_floating_point())


def test_a_step_that_makes_weights_non_finite_stops_without_writing_them(tmp_path):
    out = tmp_path / "run"
    # decoupled weight decay of 1e38 flips and scales every weight by ~1e35: step 2 overflows to inf
    result = invoke("train", TOY, "--preset", "smoke", *FAST, "--set", "train.weight_decay=1e38",
                    "--set", "train.ckpt_every=1", "--out", out)
    line = error_line(result)
    assert result.exit_code == 1 and "made the weights non-finite" in line, line
    written = sorted((out / "checkpoints").glob("*.safetensors"))
    assert written and all(_tensors_finite(p) for p in written)


def test_a_run_killed_before_its_first_checkpoint_restarts_from_step_0(smoke, tmp_path):
    out = tmp_path / "run"
    out.mkdir()
    shutil.copy(smoke / "config.json", out / "config.json")
    (out / "metrics.jsonl").write_text('{"step": 1, "loss": 1.0}\n')
    refused = invoke("train", TOY, *SMOKE, "--out", out)
    assert refused.exit_code == 2 and "--resume restarts it from step 0" in error_line(refused)
    result = invoke("train", TOY, "--resume", "--out", out, "-q")
    assert result.exit_code == 0, result.output
    (warning,) = result.stderr.strip().splitlines()
    assert warning.startswith("warning: ") and "starting it again from step 0" in warning
    assert load_checkpoint(out / "checkpoints" / "last.safetensors").step == 4
    steps = [json.loads(line)["step"] for line in (out / "metrics.jsonl").read_text().splitlines()]
    assert steps == sorted(steps) and steps[-1] == 4


def test_resume_refuses_fewer_steps_than_the_run_has_made(smoke, tmp_path):
    out = tmp_path / "run"
    shutil.copytree(smoke, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    result = invoke("train", TOY, "--resume", "--out", out, "--set", "train.steps=1", "-q")
    assert result.exit_code == 2 and "below the step 4" in error_line(result)
    assert before == {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}


def test_any_file_of_a_run_marks_the_folder_as_a_run(smoke, tmp_path):
    for keep in ("checkpoints/step_0000002.safetensors", "images/step_0000002.png"):
        out = tmp_path / keep.split("/")[0]
        (out / keep).parent.mkdir(parents=True)
        source = smoke / keep if (smoke / keep).exists() else None
        (out / keep).write_bytes(source.read_bytes() if source else b"png")
        result = invoke("train", TOY, *SMOKE, "--out", out)
        assert result.exit_code == 2 and "already holds a run" in error_line(result)
        assert sorted(p.relative_to(out).as_posix() for p in out.rglob("*") if p.is_file()) == [keep]


def test_quiet_still_prints_warnings_that_the_data_is_wrong(tmp_path):
    # fourier_scale 1e39 overflows float32: every loss is NaN, every step is skipped
    result = invoke("train", TOY, "--preset", "smoke", *FAST, "--set", "fourier_scale=1e39",
                    "--set", "train.max_bad_steps=2", "--out", tmp_path / "run")
    warnings = [line for line in result.stderr.splitlines() if line.startswith("warning: ")]
    assert len(warnings) == 2 and all("non-finite loss or gradient; step skipped" in w for w in warnings)
    assert result.exit_code == 1 and "2 non-finite steps in a row" in error_line(result)


# -------------------------------------------------------------------------------------------- Ctrl-C


def _loaded(pid: int, library: str) -> bool:
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs /proc to see when torch is loading")
def test_ctrl_c_while_torch_imports_is_one_line_and_exit_130(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    proc = subprocess.Popen([sys.executable, "-m", "deqkit", "train", TOY, "--preset", "smoke", "--out",
                             str(tmp_path / "run"), "-q"], env=env, cwd=tmp_path, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while not _loaded(proc.pid, "libtorch"):  # torch's shared libraries are being loaded: start-up
        assert proc.poll() is None and time.monotonic() < deadline
        time.sleep(0.005)
    proc.send_signal(signal.SIGINT)
    time.sleep(0.05)
    if proc.poll() is None:
        proc.send_signal(signal.SIGINT)  # an impatient second Ctrl-C
    _, stderr = proc.communicate(timeout=60)
    assert proc.returncode == 130, stderr
    assert stderr.strip().splitlines() == ["error: interrupted"], stderr
