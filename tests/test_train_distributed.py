"""Data parallelism: two gloo processes on this machine stay in sync, and only rank 0 writes."""

from __future__ import annotations

import os
import socket
from pathlib import Path

import torch
import torch.multiprocessing as mp
from safetensors.torch import load_file, save_file

TOY = Path(__file__).resolve().parents[1] / "examples" / "toy_deq"


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _worker(rank: int, world: int, port: int, tmp: str) -> None:
    os.environ.update(RANK=str(rank), WORLD_SIZE=str(world), LOCAL_RANK=str(rank),
                      MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    from deqkit.train.application import load_application
    from deqkit.train.trainer import Trainer
    from deqkit.train.distributed import shutdown

    app = load_application(TOY)
    # different seeds per rank on purpose: rank 0's initial weights must be broadcast
    config = app.make_config("smoke", ["train.steps=6", f"train.seed={rank}", "train.eval_every=0",
                                       "train.spectral_iters=0", "train.ckpt_every=3"])
    trainer = Trainer(app, config, Path(tmp) / f"out_rank{rank}")
    trainer.fit()
    save_file({k: v.contiguous() for k, v in trainer.model.state_dict().items()},
              str(Path(tmp) / f"weights_rank{rank}.safetensors"))
    shutdown(trainer.dist)


def test_two_gloo_processes_stay_in_sync_and_only_rank0_writes(tmp_path):
    # fork: the children reuse the imported torch instead of paying its import again
    mp.start_processes(_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True, start_method="fork")
    w0 = load_file(str(tmp_path / "weights_rank0.safetensors"))
    w1 = load_file(str(tmp_path / "weights_rank1.safetensors"))
    assert w0.keys() == w1.keys()
    assert all(torch.equal(w0[k], w1[k]) for k in w0)
    assert (tmp_path / "out_rank0" / "checkpoints" / "last.safetensors").exists()
    assert not (tmp_path / "out_rank1").exists()
    from deqkit.train.checkpoint import load_checkpoint

    ckpt = load_checkpoint(tmp_path / "out_rank0" / "checkpoints" / "last.safetensors")
    assert ckpt.step == 6 and ckpt.state["world"] == 2
    assert all(torch.equal(ckpt.model[k], w0[k]) for k in w0)
