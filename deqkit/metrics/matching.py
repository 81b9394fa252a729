"""One-to-one matching of two sets by the Hungarian algorithm, batched over a leading dimension.

Shared by metrics (ground-truth objects to predicted slots) and by set prediction losses (targets to
predicted elements). The assignment itself is not differentiable: callers index their differentiable
costs with the returned indices.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy.optimize import linear_sum_assignment


def hungarian_match(
    cost: torch.Tensor, *, maximize: bool = False
) -> tuple[torch.Tensor, torch.Tensor]:
    """Minimum-cost (or maximum-score) one-to-one matching of each cost matrix in a batch.

    Args:
        cost: ``[B, N, M]`` real matrix; ``cost[b, i, j]`` is the cost of pairing row ``i`` with
            column ``j`` in sample ``b``. Must be finite.
        maximize: match to maximise the total instead of minimising it.

    Returns:
        ``(row_idx, col_idx)``, both ``LongTensor[B, min(N, M)]`` on ``cost``'s device: sample ``b``
        pairs row ``row_idx[b, i]`` with column ``col_idx[b, i]``; rows are in increasing order
        (scipy's convention), so for ``N <= M`` ``row_idx[b]`` is ``arange(N)``.
    """
    if cost.ndim != 3:
        raise ValueError(f"hungarian_match expects a cost of shape [B, N, M], got {tuple(cost.shape)}")
    if not cost.is_floating_point():
        cost = cost.double()
    values = cost.detach().to("cpu", torch.float64).numpy()
    if not np.isfinite(values).all():
        raise ValueError("hungarian_match needs finite costs; got NaN or inf (mask with a large finite value instead)")
    batch, n, m = values.shape
    k = min(n, m)
    rows = np.empty((batch, k), dtype=np.int64)
    cols = np.empty((batch, k), dtype=np.int64)
    for b in range(batch):  # scipy solves one matrix at a time; B is small next to the O(N^3) solve
        rows[b], cols[b] = linear_sum_assignment(values[b], maximize=maximize)
    return torch.from_numpy(rows).to(cost.device), torch.from_numpy(cols).to(cost.device)
