"""Data parallelism: two gloo processes on this machine stay in sync, only rank 0 writes, a non-finite loss on one
rank is skipped by both, implicit gradients average like one process's doubled batch, and a dead or stopped rank
makes the other fail within train.dist_timeout instead of hanging."""

from __future__ import annotations

import dataclasses
import math
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

ROOT = Path(__file__).resolve().parents[1]
TOY = ROOT / "examples" / "toy_deq"
QUIET = ["train.eval_every=0", "train.spectral_iters=0", "train.eval_batches=1"]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _join(rank: int, world: int, port: int) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))


def _spawn(worker, *args) -> None:
    # fork: the children reuse the imported torch instead of paying its import again
    mp.start_processes(worker, args=(2, _free_port(), *args), nprocs=2, join=True, start_method="fork")


def _nan_on(app, rank: int, bad_call: int):
    """``app`` whose loss is NaN on ``rank`` at its ``bad_call``-th call (1-based)."""
    calls = {"n": 0}

    def loss(model, batch, cfg):
        calls["n"] += 1
        value, logs = app.loss(model, batch, cfg)
        poisoned = int(os.environ["RANK"]) == rank and calls["n"] == bad_call
        return (value * math.nan if poisoned else value), logs

    return dataclasses.replace(app, loss=loss)


def _worker(rank: int, world: int, port: int, tmp: str, nan_rank: int | None) -> None:
    _join(rank, world, port)
    from deqkit.train.application import load_application
    from deqkit.train.distributed import shutdown
    from deqkit.train.trainer import Trainer

    app = load_application(TOY)
    if nan_rank is not None:
        app = _nan_on(app, nan_rank, bad_call=3)
    # different seeds per rank on purpose: rank 0's initial weights must be broadcast
    config = app.make_config("smoke", ["train.steps=6", f"train.seed={rank}", "train.ckpt_every=3",
                                       "train.dist_timeout=60"] + QUIET)
    trainer = Trainer(app, config, Path(tmp) / f"out_rank{rank}")
    result = trainer.fit()
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()},
              str(Path(tmp) / f"weights_rank{rank}.safetensors"))
    (Path(tmp) / f"skipped_rank{rank}").write_text(str(result.skipped_steps))
    shutdown(trainer.dist)


def _weights_equal(tmp: Path) -> bool:
    w0 = load_file(str(tmp / "weights_rank0.safetensors"))
    w1 = load_file(str(tmp / "weights_rank1.safetensors"))
    return w0.keys() == w1.keys() and all(torch.equal(w0[k], w1[k]) for k in w0)


def test_two_gloo_processes_stay_in_sync_and_only_rank0_writes(tmp_path):
    _spawn(_worker, str(tmp_path), None)
    assert _weights_equal(tmp_path)
    assert (tmp_path / "out_rank0" / "checkpoints" / "last.safetensors").exists()
    assert not (tmp_path / "out_rank1").exists()
    from deqkit.train.checkpoint import load_checkpoint

    w0 = load_file(str(tmp_path / "weights_rank0.safetensors"))
    ckpt = load_checkpoint(tmp_path / "out_rank0" / "checkpoints" / "last.safetensors")
    assert ckpt.step == 6 and ckpt.state["world"] == 2 and ckpt.state["skipped_steps"] == 0
    assert all(torch.equal(ckpt.model[k], w0[k]) for k in w0)


def test_a_non_finite_loss_on_one_rank_is_skipped_by_every_rank(tmp_path):
    _spawn(_worker, str(tmp_path), 1)
    assert [(tmp_path / f"skipped_rank{r}").read_text() for r in (0, 1)] == ["1", "1"]
    assert _weights_equal(tmp_path)
    records = [line for line in (tmp_path / "out_rank0" / "metrics.jsonl").read_text().splitlines()]
    assert '"skipped_steps": 1' in records[-1]


# ------------------------------------------------------------------ implicit gradients under DDP


def _first_gradients(backward: str, batch: int) -> tuple[Any, dict[str, torch.Tensor]]:
    from deqkit.train.application import load_application
    from deqkit.train.trainer import Trainer

    app = load_application(TOY)
    # a fixed iteration count, so the forward solve does not depend on which samples share the batch
    config = app.make_config("smoke", ["train.steps=1", f"train.batch_size={batch}", f"backward={backward}",
                                       "solver=iteration", "tol=1e-30", "train.dist_timeout=60"] + QUIET)
    trainer = Trainer(app, config, None)
    grads: dict[str, torch.Tensor] = {}

    def record(optimizer, args, kwargs):
        grads.update({n: p.grad.clone() for n, p in trainer.model.named_parameters() if p.grad is not None})

    trainer.optimizer.register_step_pre_hook(record)
    trainer.fit()
    return trainer, grads


def _gradient_worker(rank: int, world: int, port: int, tmp: str) -> None:
    _join(rank, world, port)
    from deqkit.train.distributed import shutdown

    for backward in ("ift", "neumann"):
        trainer, grads = _first_gradients(backward, 32)
        save_file(grads, str(Path(tmp) / f"{backward}_rank{rank}.safetensors"))
    shutdown(trainer.dist)


def test_implicit_gradients_under_two_ranks_equal_one_process_with_the_doubled_batch(tmp_path):
    _spawn(_gradient_worker, str(tmp_path))
    for backward in ("ift", "neumann"):
        g0 = load_file(str(tmp_path / f"{backward}_rank0.safetensors"))
        g1 = load_file(str(tmp_path / f"{backward}_rank1.safetensors"))
        _, single = _first_gradients(backward, 64)
        assert g0.keys() == single.keys() and len(g0) > 0
        for name in g0:
            assert torch.equal(g0[name], g1[name]), (backward, name)
            torch.testing.assert_close(g0[name], single[name], rtol=1e-4, atol=1e-6, msg=f"{backward} {name}")


# ------------------------------------------------------------------------- a rank dies or stops


def _cli_rank(rank: int, port: int, out: Path) -> subprocess.Popen:
    env = dict(os.environ, RANK=str(rank), WORLD_SIZE="2", LOCAL_RANK=str(rank), MASTER_ADDR="127.0.0.1",
               MASTER_PORT=str(port), PYTHONPATH=str(ROOT))
    command = [sys.executable, "-m", "deqkit", "train", str(TOY), "--preset", "smoke", "--out", str(out), "-q",
               "--set", "train.steps=1000000", "--set", "train.dist_timeout=10", "--set", "train.log_every=1"]
    return subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGSTOP], ids=["killed", "stopped"])
def test_the_other_rank_exits_with_one_line_within_the_timeout_when_a_rank_dies_or_stops(tmp_path, sig):
    port, out = _free_port(), tmp_path / "run"
    ranks = [_cli_rank(r, port, out) for r in (0, 1)]
    try:
        deadline = time.monotonic() + 120
        while not (out / "metrics.jsonl").exists() or not (out / "metrics.jsonl").read_text().strip():
            assert time.monotonic() < deadline and ranks[0].poll() is None, ranks[0].communicate()
            time.sleep(0.2)
        ranks[1].send_signal(sig)
        hit = time.monotonic()
        _, stderr = ranks[0].communicate(timeout=40)
        waited = time.monotonic() - hit
    finally:
        for proc in ranks:
            if proc.poll() is None:
                proc.kill()
            proc.communicate()
    assert ranks[0].returncode == 1, stderr
    assert waited < 10 + 15, waited  # the timeout, plus the step in flight and the exit
    assert "Traceback" not in stderr
    errors = [line for line in stderr.splitlines() if line.startswith("error:")]
    assert len(errors) == 1 and "rank 0 of 2: lost the other ranks" in errors[0], stderr
    assert "train.dist_timeout=10" in errors[0]


@pytest.mark.parametrize("message", [
    "[../third_party/gloo/gloo/transport/tcp/pair.cc:534] Connection closed by peer [127.0.0.1]:5555",
    "Application timeout caused pair closure",  # gloo, when the peer is stopped during DDP's backward all-reduce
    "Timed out waiting 10000ms for recv operation to complete",
    "NCCL communicator was aborted on rank 0",
])
def test_backend_errors_of_a_lost_peer_become_one_line(message):
    from deqkit.train.distributed import Dist, collectives
    from deqkit.train.errors import TrainingError

    with pytest.raises(TrainingError, match="lost the other ranks while backward"):
        with collectives(Dist(0, 2, timeout=10.0), "backward"):
            raise RuntimeError(message)
    with pytest.raises(RuntimeError, match="shape mismatch"):  # an ordinary error stays itself
        with collectives(Dist(0, 2, timeout=10.0), "backward"):
            raise RuntimeError("shape mismatch")
