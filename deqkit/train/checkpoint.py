"""Checkpoints as one safetensors file: weights, optimiser, scheduler, RNG and data position, no pickle.

Tensors go into the file under prefixed names (``model/...``, ``optim/<param>/<key>``, ``rng/...``);
everything else (step, config, optimiser hyper-parameters, scheduler and RNG states, the data position)
is JSON in the safetensors metadata, next to a format marker, the application name, the deqkit
version and the provenance of the writing process (commit, package versions, command line). Files are written atomically (temporary file in the same folder, fsync, rename), so a process
killed at any moment leaves the previous checkpoint intact.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from deqkit.provenance import provenance
from deqkit.train.errors import CheckpointError

FORMAT = "deqkit-checkpoint/1"
_JSON_NAMES = {dict: "object", list: "array"}


def deqkit_version() -> str:
    """The installed deqkit version (or the source tree's, or 'unknown')."""
    try:
        from importlib.metadata import version

        return version("deqkit")
    except Exception:
        try:
            import deqkit

            return str(getattr(deqkit, "__version__", "unknown"))
        except Exception:
            return "unknown"


@dataclass
class Checkpoint:
    """A loaded checkpoint: everything needed to rebuild and continue a run."""

    app: str
    app_path: str | None
    step: int
    config: dict[str, Any]
    model: dict[str, torch.Tensor]
    optimizer: dict[str, Any] | None = None
    scheduler: dict[str, Any] | None = None
    rng: dict[str, Any] | None = None
    state: dict[str, Any] = field(default_factory=dict)  # trainer counters, data position
    version: str = "unknown"
    provenance: dict[str, Any] | None = None  # of the process that wrote the file (None in older files)


# ------------------------------------------------------------------------------------------------ RNG


def capture_rng() -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Torch (CPU and CUDA), numpy and Python RNG states as (tensors, JSON)."""
    tensors = {"rng/torch": torch.get_rng_state()}
    if torch.cuda.is_available():
        for i, state in enumerate(torch.cuda.get_rng_state_all()):
            tensors[f"rng/cuda/{i}"] = state
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, internal, gauss_next = random.getstate()
    meta = {
        "numpy": [kind, keys.tolist(), int(pos), int(has_gauss), float(gauss)],
        "python": [version, list(internal), gauss_next],
    }
    return tensors, meta


def restore_rng(tensors: dict[str, torch.Tensor], meta: dict[str, Any]) -> None:
    """Inverse of :func:`capture_rng` (CUDA states are restored when the devices exist)."""
    if "rng/torch" in tensors:
        torch.set_rng_state(tensors["rng/torch"])
    cuda = [tensors[k] for k in sorted(tensors) if k.startswith("rng/cuda/")]
    if cuda and torch.cuda.is_available() and len(cuda) == torch.cuda.device_count():
        torch.cuda.set_rng_state_all(cuda)
    if "numpy" in meta:
        kind, keys, pos, has_gauss, gauss = meta["numpy"]
        np.random.set_state((kind, np.asarray(keys, dtype=np.uint32), pos, has_gauss, gauss))
    if "python" in meta:
        version, internal, gauss_next = meta["python"]
        random.setstate((version, tuple(internal), gauss_next))


# ------------------------------------------------------------------------------------------ optimiser


def _split_optimizer(state: dict[str, Any]) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    tensors, scalars = {}, {}
    for param_id, entries in state["state"].items():
        for key, value in entries.items():
            if isinstance(value, torch.Tensor):
                tensors[f"optim/{param_id}/{key}"] = value
            else:
                scalars.setdefault(str(param_id), {})[key] = value
    return tensors, {"param_groups": state["param_groups"], "scalars": scalars}


def _join_optimizer(tensors: dict[str, torch.Tensor], meta: Any) -> dict[str, Any]:
    """Inverse of :func:`_split_optimizer`; a malformed structure raises ``ValueError``."""
    if not isinstance(meta, dict) or not isinstance(meta.get("param_groups"), list):
        raise ValueError("optimizer metadata must be an object with a list 'param_groups'")
    if not all(isinstance(group, dict) and isinstance(group.get("params"), list) for group in meta["param_groups"]):
        raise ValueError("every optimizer param group must be an object with a list 'params'")
    scalars = meta.get("scalars", {})
    if not isinstance(scalars, dict) or not all(isinstance(v, dict) for v in scalars.values()):
        raise ValueError("optimizer 'scalars' must map parameter ids to objects")
    state: dict[int, dict[str, Any]] = {}
    for name, value in tensors.items():
        _, param_id, key = name.split("/", 2)
        state.setdefault(int(param_id), {})[key] = value
    for param_id, entries in scalars.items():
        state.setdefault(int(param_id), {}).update(entries)
    return {"state": state, "param_groups": meta["param_groups"]}


# --------------------------------------------------------------------------------------------- saving


def _jsonable(value: Any) -> Any:
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    if isinstance(value, (np.generic,)):
        return value.item()
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    return None  # callables (e.g. lr lambdas) are rebuilt from the config, not stored


def save_checkpoint(path: str | os.PathLike, ckpt: Checkpoint) -> Path:
    """Write ``ckpt`` to ``path`` atomically; returns the path."""
    path = Path(path)
    tensors: dict[str, torch.Tensor] = {}
    for name, value in ckpt.model.items():
        tensors["model/" + name] = value
    meta: dict[str, Any] = {
        "format": FORMAT,
        "app": ckpt.app,
        "app_path": ckpt.app_path or "",
        "deqkit_version": ckpt.version,
        "provenance": json.dumps(provenance()),
        "step": str(ckpt.step),
        "config": json.dumps(ckpt.config),
        "state": json.dumps(_jsonable(ckpt.state)),
    }
    if ckpt.optimizer is not None:
        optim_tensors, optim_meta = _split_optimizer(ckpt.optimizer)
        tensors.update(optim_tensors)
        meta["optimizer"] = json.dumps(_jsonable(optim_meta))
    if ckpt.scheduler is not None:
        meta["scheduler"] = json.dumps(_jsonable(ckpt.scheduler))
    if ckpt.rng is not None:
        tensors.update(ckpt.rng["tensors"])
        meta["rng"] = json.dumps(ckpt.rng["meta"])
    # safetensors refuses shared or strided storage: give every entry its own contiguous CPU copy
    tensors = {k: v.detach().to("cpu", copy=True).contiguous() for k, v in tensors.items()}
    # a checksum of the tensor bytes catches corruption that leaves the header readable
    meta["sha256"] = hashlib.sha256(_data_section(st_save(tensors, metadata=meta))).hexdigest()
    atomic_write(path, st_save(tensors, metadata=meta))
    return path


def _data_section(blob: bytes) -> bytes:
    """The tensor bytes of a safetensors file (after the 8-byte length and the JSON header)."""
    header_len = int.from_bytes(blob[:8], "little")
    return blob[8 + header_len:]


def atomic_write(path: Path, data: bytes) -> None:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one, never a part."""
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        with open(tmp, "wb") as handle:
            handle.write(data)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    finally:
        if tmp.exists():
            tmp.unlink()
    try:  # make the rename itself durable
        fd = os.open(path.parent, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)
    except OSError:
        pass


# -------------------------------------------------------------------------------------------- loading


def read_metadata(path: str | os.PathLike) -> dict[str, str]:
    """The metadata of a deqkit checkpoint, validated; raises :class:`CheckpointError` in one line."""
    path = Path(path)
    if not path.exists():
        raise CheckpointError(f"checkpoint not found: {path}")
    if not path.is_file():
        raise CheckpointError(f"not a checkpoint file: {path}")
    try:
        with safe_open(str(path), framework="pt") as handle:
            meta = handle.metadata() or {}
    except (SafetensorError, OSError, ValueError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: not a valid safetensors file "
                              f"(truncated or corrupt?): {err}") from None
    if meta.get("format") != FORMAT:
        raise CheckpointError(f"{path} is not a deqkit checkpoint (format marker "
                              f"{meta.get('format')!r}, expected {FORMAT!r})")
    return meta


def _provenance_block(meta: dict[str, str]) -> dict[str, Any] | None:
    """The stored provenance block (``None`` for files written before checkpoints had one, or a bad block)."""
    try:
        block = json.loads(meta.get("provenance", "null"))
    except json.JSONDecodeError:
        return None
    return block if isinstance(block, dict) else None


def _json(meta: dict[str, str], key: str, kind: type, default: Any = ...) -> Any:
    """The JSON value of metadata ``key``, which must be of type ``kind`` (``ValueError`` otherwise)."""
    if key not in meta:
        if default is ...:
            raise KeyError(key)
        return default
    value = json.loads(meta[key])
    if not isinstance(value, kind):
        raise ValueError(f"metadata '{key}' must be a JSON {_JSON_NAMES[kind]}, got {type(value).__name__}")
    return value


def load_checkpoint(path: str | os.PathLike, *, app: str | None = None) -> Checkpoint:
    """Read a checkpoint written by :func:`save_checkpoint`; ``app`` checks it belongs to that application."""
    path = Path(path)
    meta = read_metadata(path)
    if app is not None and meta.get("app") != app:
        raise CheckpointError(f"{path} is a checkpoint of application '{meta.get('app')}', not '{app}'")
    try:
        blob = path.read_bytes()
        if "sha256" in meta and hashlib.sha256(_data_section(blob)).hexdigest() != meta["sha256"]:
            raise CheckpointError(f"checkpoint {path} is corrupt: tensor data does not match its checksum")
        tensors = st_load(blob)
        config = _json(meta, "config", dict)
        step = int(meta["step"])
        if step < 0:
            raise ValueError(f"step {step} is negative")
        state = _json(meta, "state", dict, default={})
        optimizer = None
        if "optimizer" in meta:
            optim_tensors = {k: v for k, v in tensors.items() if k.startswith("optim/")}
            optimizer = _join_optimizer(optim_tensors, json.loads(meta["optimizer"]))
        scheduler = _json(meta, "scheduler", dict, default=None)
        rng = None
        if "rng" in meta:
            rng = {"tensors": {k: v for k, v in tensors.items() if k.startswith("rng/")},
                   "meta": _json(meta, "rng", dict)}
    except (SafetensorError, OSError, ValueError, KeyError, TypeError, AttributeError, IndexError) as err:
        raise CheckpointError(f"cannot read checkpoint {path}: corrupt content ({type(err).__name__}: "
                              f"{err})") from None
    model = {k[len("model/"):]: v for k, v in tensors.items() if k.startswith("model/")}
    return Checkpoint(app=meta.get("app", ""), app_path=meta.get("app_path") or None, step=step,
                      config=config, model=model, optimizer=optimizer, scheduler=scheduler, rng=rng,
                      state=state, version=meta.get("deqkit_version", "unknown"), provenance=_provenance_block(meta))
