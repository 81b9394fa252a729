"""Read the fixed-point layers of any model: solver statistics and the Jacobian's spectral norm.

The trainer calls these after a training forward pass; every ``deqkit.FixedPoint`` submodule keeps a record
of its last solve (``fp.last``) which is all they need. They never change the model or its gradients.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn


def fixed_points(model: nn.Module) -> list[tuple[str, nn.Module]]:
    """``(name, module)`` for every ``deqkit.FixedPoint`` in ``model`` (``'fp'`` for the model itself)."""
    from deqkit.diagnostics.report import fixed_points as find

    return find(model)


def solver_stats(model: nn.Module) -> dict[str, dict[str, float]]:
    """Per fixed point of the last forward pass: mean NFE, mean/max residual, converged fraction."""
    stats = {}
    for name, fp in fixed_points(model):
        last = getattr(fp, "last", None)
        if last is None:
            continue
        info = last.info
        stats[name] = {
            "nfe": info.nfe.float().mean().item(),
            "residual": info.residual.float().mean().item(),
            "residual_max": info.residual.float().max().item(),
        }
        if fp.tol is not None:  # a fixed iteration count (tol=None) has no notion of convergence
            stats[name]["converged"] = info.converged.float().mean().item()
    return stats


def direct_solve_stats(records: list[Any]) -> dict[str, dict[str, float]]:
    """Statistics of direct ``deqkit.fixed_point`` calls (``record_solves`` records of one forward pass),
    named ``fixed_point[i]`` in call order, as :func:`solver_stats` names ``FixedPoint`` layers."""
    stats = {}
    for i, record in enumerate(records):
        info = record.info
        stats[f"fixed_point[{i}]"] = {
            "nfe": info.nfe.float().mean().item(),
            "residual": info.residual.float().mean().item(),
            "residual_max": info.residual.float().max().item(),
        }
        if record.tol is not None:
            stats[f"fixed_point[{i}]"]["converged"] = info.converged.float().mean().item()
    return stats


def spectral_norms(model: nn.Module, iters: int) -> dict[str, dict[str, float]]:
    """Per fixed point: mean/max over the batch of the spectral norm of df/dz at its last fixed point.

    Uses ``deqkit.diagnostics.spectral_norm`` (power iteration with JVPs/VJPs); runs in a forked RNG so
    stochastic layers do not shift the training stream. Returns ``{}`` if the diagnostics are unavailable.
    """
    try:
        from deqkit.diagnostics import spectral_norm
    except ImportError:
        return {}
    out = {}
    for name, fp in fixed_points(model):
        last = getattr(fp, "last", None)
        if last is None:
            continue
        with torch.random.fork_rng(devices=_devices(last.z)), torch.enable_grad():
            sigma = spectral_norm(fp.closure(*last.inputs), last.z, iters=iters).detach().float()
        out[name] = {"spectral_norm": sigma.mean().item(), "spectral_norm_max": sigma.max().item()}
    return out


def _devices(z: Any) -> list[int]:
    leaves = torch.utils._pytree.tree_leaves(z)
    return [leaf.device.index or 0 for leaf in leaves[:1] if leaf.is_cuda]
