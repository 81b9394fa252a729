"""Checkpoints: lossless round trip without pickle, atomic writes, one-line errors for bad files."""

from __future__ import annotations

import random
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import save_file

from deqkit.train.checkpoint import (FORMAT, Checkpoint, capture_rng, load_checkpoint, read_metadata,
                                     restore_rng, save_checkpoint)
from deqkit.train.errors import CheckpointError


def _checkpoint() -> tuple[Checkpoint, torch.nn.Module, torch.optim.Optimizer]:
    torch.manual_seed(0)
    model = torch.nn.Module()
    model.a, model.b = torch.nn.Linear(3, 4), torch.nn.Linear(4, 2)
    model.tied = model.a  # the same tensors under two names: safetensors needs separate copies
    optimizer = torch.optim.AdamW(model.parameters(), lr=1e-2, betas=(0.8, 0.9))
    model.b(model.a(torch.randn(5, 3))).sum().backward()
    optimizer.step()
    tensors, meta = capture_rng()
    ckpt = Checkpoint(app="demo", app_path="/somewhere", step=7, config={"train": {"lr": 0.01}},
                      model=model.state_dict(), optimizer=optimizer.state_dict(), scheduler={"last_epoch": 7},
                      rng={"tensors": tensors, "meta": meta}, state={"data": {"epoch": 1, "index": 2}})
    return ckpt, model, optimizer


def test_round_trip_restores_weights_optimizer_and_rng(tmp_path):
    ckpt, model, optimizer = _checkpoint()
    path = save_checkpoint(tmp_path / "c.safetensors", ckpt)
    assert b"pickle" not in path.read_bytes()[:8]  # a safetensors header, not a pickle stream
    loaded = load_checkpoint(path, app="demo")
    assert loaded.step == 7 and loaded.config == {"train": {"lr": 0.01}} and loaded.state["data"]["index"] == 2
    for key, value in model.state_dict().items():
        assert torch.equal(loaded.model[key], value)
    fresh = torch.optim.AdamW(model.parameters(), lr=1.0)
    fresh.load_state_dict(loaded.optimizer)
    original = optimizer.state_dict()
    for pid, entries in original["state"].items():
        for key, value in entries.items():
            assert torch.equal(fresh.state_dict()["state"][pid][key], value)
    assert fresh.param_groups[0]["lr"] == 1e-2 and tuple(fresh.param_groups[0]["betas"]) == (0.8, 0.9)
    # RNG: drawing after a restore repeats the draws made after the capture
    restore_rng(loaded.rng["tensors"], loaded.rng["meta"])
    first = (torch.rand(3), np.random.rand(3), random.random())
    restore_rng(loaded.rng["tensors"], loaded.rng["meta"])
    second = (torch.rand(3), np.random.rand(3), random.random())
    assert torch.equal(first[0], second[0]) and np.array_equal(first[1], second[1]) and first[2] == second[2]
    assert read_metadata(path)["format"] == FORMAT


def test_write_is_atomic_and_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    ckpt, _, _ = _checkpoint()
    path = save_checkpoint(tmp_path / "last.safetensors", ckpt)
    before = path.read_bytes()
    import deqkit.train.checkpoint as module

    def crash(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(module.os, "replace", crash)
    ckpt.step = 8
    with pytest.raises(OSError):
        save_checkpoint(path, ckpt)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last.safetensors"]  # no temporary left over


def _expect_one_line(path: Path, match: str, **kwargs) -> None:
    with pytest.raises(CheckpointError, match=match) as err:
        load_checkpoint(path, **kwargs)
    assert "\n" not in str(err.value)


def test_truncated_corrupt_foreign_and_other_app_checkpoints_are_rejected(tmp_path):
    ckpt, _, _ = _checkpoint()
    good = save_checkpoint(tmp_path / "good.safetensors", ckpt).read_bytes()
    (tmp_path / "truncated.safetensors").write_bytes(good[: len(good) - 100])
    (tmp_path / "header_cut.safetensors").write_bytes(good[:50])
    flipped = bytearray(good)
    flipped[-5] ^= 0xFF
    (tmp_path / "flipped.safetensors").write_bytes(bytes(flipped))
    (tmp_path / "garbage.safetensors").write_bytes(b"\x00" * 7)
    save_file({"w": torch.zeros(2)}, str(tmp_path / "foreign.safetensors"), metadata={"format": "pt"})
    _expect_one_line(tmp_path / "truncated.safetensors", "truncated or corrupt")
    _expect_one_line(tmp_path / "header_cut.safetensors", "truncated or corrupt")
    _expect_one_line(tmp_path / "flipped.safetensors", "checksum")
    _expect_one_line(tmp_path / "garbage.safetensors", "truncated or corrupt")
    _expect_one_line(tmp_path / "foreign.safetensors", "not a deqkit checkpoint")
    _expect_one_line(tmp_path / "missing.safetensors", "not found")
    _expect_one_line(tmp_path / "good.safetensors", "application 'demo', not 'other'", app="other")


_WRITER = """
import sys, torch
from deqkit.train.checkpoint import Checkpoint, save_checkpoint
weights = {"w": torch.randn(4_000_000)}  # 16 MB: a write takes long enough for kills to land inside it
step = 0
while True:
    step += 1
    save_checkpoint(sys.argv[1], Checkpoint(app="demo", app_path=None, step=step, config={}, model=weights))
"""


def test_sigkill_during_writes_leaves_a_loadable_checkpoint(tmp_path):
    import os
    import signal
    import subprocess
    import sys
    import time

    root = Path(__file__).resolve().parents[1]
    env = {**os.environ, "PYTHONPATH": str(root) + os.pathsep + os.environ.get("PYTHONPATH", "")}
    path = tmp_path / "last.safetensors"
    rng = random.Random(0)
    for _ in range(3):
        proc = subprocess.Popen([sys.executable, "-c", _WRITER, str(path)], env=env)
        while not path.exists():
            assert proc.poll() is None
            time.sleep(0.01)
        time.sleep(rng.uniform(0.05, 0.4))
        proc.send_signal(signal.SIGKILL)
        proc.wait()
        assert load_checkpoint(path, app="demo").step >= 1
