"""Object-discovery metrics: how well predicted slot masks partition an image into its objects.

Ground truth is an integer id map ``[B, H, W]`` (or ``[B, N]`` for any flattened set of points) in which
``0`` is the background and every other id is one object; ids need not be contiguous. Predictions are
either an integer id map of the same shape, or soft slot masks ``[B, K, H, W]`` (``[B, K, N]``) that are
turned into a hard partition by an argmax over the slot dimension (ties go to the lowest slot index).

Every metric reduces a per-image contingency table ``[B, T, P]`` (pixels of true label ``t`` assigned to
predicted label ``p``), built with one ``scatter_add`` over all images at once, so no Python loop ever
touches pixels; only the Hungarian matching in :func:`matched_miou` loops, once per image, on tiny
``[T, P]`` matrices.
"""

from __future__ import annotations

import torch

from deqkit.metrics.matching import hungarian_match


def ari(
    true_masks: torch.Tensor, pred_masks: torch.Tensor, *, ignore_background: bool = False
) -> torch.Tensor:
    """Adjusted Rand index between the true and predicted partition of each image's pixels.

    ARI counts pixel pairs on which the two partitions agree (together in both, or apart in both),
    adjusted so that a random labelling scores 0 in expectation and identical partitions score 1; it is
    invariant to permuting label ids. It follows ``sklearn.metrics.adjusted_rand_score`` exactly,
    including its limit case: when no pair of pixels is split differently by the two partitions (fewer
    than 2 pixels, both a single cluster, both all singletons, or identical) the score is 1.0.

    Args:
        true_masks: integer ids ``[B, H, W]`` or ``[B, N]``; 0 is the background.
        pred_masks: integer ids of the same shape, or soft masks ``[B, K, H, W]`` / ``[B, K, N]``.
        ignore_background: score only pixels whose true id is not 0 (the FG-ARI of Greff et al. 2019 and
            Locatello et al. 2020). An image with fewer than 2 foreground pixels then scores 1.0 (the
            limit case above); drop such images with a mask if they should not count.

    Returns:
        ``Tensor[B]`` of scores in ``[-1, 1]`` (float32; float64 arithmetic inside).
    """
    true_ids, pred_ids, _ = _dense_ids(true_masks, pred_masks)
    weight = (true_masks.reshape(true_ids.shape) != 0) if ignore_background else None
    table = _contingency(true_ids, pred_ids, weight)
    work = _work_dtype(table.device)

    n = table.sum(dim=(1, 2))
    same_both = (table * table).sum(dim=(1, 2))
    same_true = (table.sum(dim=2) ** 2).sum(dim=1)
    same_pred = (table.sum(dim=1) ** 2).sum(dim=1)
    # Ordered pixel-pair counts, as sklearn's pair_confusion_matrix (exact in int64).
    tp = (same_both - n).to(work)
    fn = (same_true - same_both).to(work)  # together in truth, apart in prediction
    fp = (same_pred - same_both).to(work)  # apart in truth, together in prediction
    tn = (n * n - same_true - same_pred + same_both).to(work)

    numerator = 2.0 * (tp * tn - fn * fp)
    denominator = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    perfect = (fn == 0) & (fp == 0)  # the only case in which the denominator can be 0
    score = torch.where(perfect, torch.ones_like(numerator), numerator / torch.where(perfect, 1.0, denominator))
    return score.to(torch.float32)


def fg_ari(true_masks: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """Foreground ARI: :func:`ari` over pixels whose true id is not 0 (background). ``Tensor[B]``.

    Where DeepMind's reference (``multi_object_datasets/segmentation_metrics.py``) divides 0 by 0 and
    returns NaN, this returns 1.0 (sklearn's convention); :func:`fg_ari_undefined` flags those images."""
    return ari(true_masks, pred_masks, ignore_background=True)


def fg_ari_undefined(true_masks: torch.Tensor, pred_masks: torch.Tensor) -> torch.Tensor:
    """``BoolTensor[B]``: images whose FG-ARI DeepMind's reference leaves undefined (0/0, NaN) and
    :func:`fg_ari` scores 1.0: fewer than 2 foreground pixels (an empty foreground, one pixel), or the
    foreground one true object *and* one predicted segment, or every foreground pixel its own segment in
    both partitions. Elsewhere both give the same number, so the mean over defined images is
    ``(mean - f) / (1 - f)`` with ``f`` the mean of this flag."""
    true_ids, pred_ids, _ = _dense_ids(true_masks, pred_masks)
    table = _contingency(true_ids, pred_ids, true_masks.reshape(true_ids.shape) != 0)
    n = table.sum(dim=(1, 2))
    true_groups = (table.sum(dim=2) > 0).sum(dim=1)
    pred_groups = (table.sum(dim=1) > 0).sum(dim=1)
    both_one = (true_groups == 1) & (pred_groups == 1)
    both_singletons = (true_groups == n) & (pred_groups == n)
    return (n < 2) | both_one | both_singletons


def matched_miou(
    true_masks: torch.Tensor, pred_masks: torch.Tensor, *, ignore_background: bool = True
) -> torch.Tensor:
    """Mean IoU of true objects matched one-to-one to predicted segments by the Hungarian algorithm.

    The matching maximises the summed IoU; each true object present in the image counts once, and an
    object left without a partner (more objects than predicted segments) scores 0. IoU is taken over all
    pixels, so a slot that covers an object and some background is penalised for the background.

    Args:
        true_masks: integer ids ``[B, H, W]`` or ``[B, N]``; 0 is the background.
        pred_masks: integer ids of the same shape, or soft masks ``[B, K, H, W]`` / ``[B, K, N]``.
        ignore_background: do not count the background (id 0) as an object to match.

    Returns:
        ``Tensor[B]`` in ``[0, 1]`` (float32); NaN for an image without any object to match (reduce with
        ``torch.nanmean`` if such images occur).
    """
    true_ids, pred_ids, true_labels = _dense_ids(true_masks, pred_masks)
    table = _contingency(true_ids, pred_ids, None)
    work = _work_dtype(table.device)

    inter = table.to(work)
    area_true = inter.sum(dim=2, keepdim=True)
    area_pred = inter.sum(dim=1, keepdim=True)
    union = area_true + area_pred - inter
    iou = torch.where(union > 0, inter / union.clamp_min(1), torch.zeros_like(inter))

    present = area_true.squeeze(2) > 0  # [B, T]: labels seen in the whole batch, not all in each image
    if ignore_background:
        present = present & (true_labels != 0)[None, :]
    # Absent rows get IoU 0 everywhere: they cannot change the optimal matching of the present rows.
    iou = iou * present[:, :, None]
    rows, cols = hungarian_match(iou, maximize=True)
    batch = torch.arange(iou.shape[0], device=iou.device)[:, None]
    total = iou[batch, rows, cols].sum(dim=1)
    count = present.sum(dim=1)
    mean = torch.where(count > 0, total / count.clamp_min(1), torch.full_like(total, float("nan")))
    return mean.to(torch.float32)


def _dense_ids(
    true_masks: torch.Tensor, pred_masks: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Flatten both partitions to ``[B, N]`` dense label indices.

    Returns ``(true_ids, pred_ids, true_labels)``: ``true_ids`` index into ``true_labels`` (the sorted
    distinct true ids of the whole batch, ``[T]``); ``pred_ids`` are slot indices or dense indices of
    the distinct predicted ids.
    """
    if true_masks.is_floating_point() or true_masks.is_complex() or true_masks.dtype == torch.bool:
        raise TypeError(f"true_masks must be an integer id map [B, H, W] or [B, N], got dtype {true_masks.dtype}")
    if true_masks.ndim < 2:
        raise ValueError(f"true_masks must be [B, H, W] or [B, N], got shape {tuple(true_masks.shape)}")
    batch = true_masks.shape[0]
    if pred_masks.is_floating_point():
        expected = (batch, "K", *true_masks.shape[1:])
        if pred_masks.ndim != true_masks.ndim + 1 or pred_masks.shape[0] != batch or pred_masks.shape[2:] != true_masks.shape[1:]:
            raise ValueError(f"soft pred_masks must have shape {expected}, got {tuple(pred_masks.shape)}")
        pred_ids = pred_masks.argmax(dim=1).reshape(batch, -1)
    elif pred_masks.dtype != torch.bool and not pred_masks.is_complex():
        if pred_masks.shape != true_masks.shape:
            raise ValueError(
                f"integer pred_masks must match true_masks' shape {tuple(true_masks.shape)}, got {tuple(pred_masks.shape)}"
            )
        pred_ids = torch.unique(pred_masks, return_inverse=True)[1].reshape(batch, -1)
    else:
        raise TypeError(f"pred_masks must be integer ids or float soft masks, got dtype {pred_masks.dtype}")
    if pred_ids.device != true_masks.device:
        raise ValueError(f"true_masks and pred_masks are on different devices ({true_masks.device}, {pred_ids.device})")
    true_labels, true_inverse = torch.unique(true_masks, return_inverse=True)
    return true_inverse.reshape(batch, -1), pred_ids, true_labels


def _contingency(true_ids: torch.Tensor, pred_ids: torch.Tensor, weight: torch.Tensor | None) -> torch.Tensor:
    """Per-image counts ``LongTensor[B, T, P]`` of pixels with dense true label t and predicted label p.

    ``T``/``P`` are one more than the largest index in the batch; ``weight`` (bool ``[B, N]``) drops
    pixels from the counts.
    """
    batch = true_ids.shape[0]
    num_true = int(true_ids.max()) + 1 if true_ids.numel() else 1
    num_pred = int(pred_ids.max()) + 1 if pred_ids.numel() else 1
    offset = torch.arange(batch, device=true_ids.device)[:, None] * (num_true * num_pred)
    cell = offset + true_ids * num_pred + pred_ids
    ones = torch.ones_like(cell) if weight is None else weight.to(torch.int64)
    table = torch.zeros(batch * num_true * num_pred, dtype=torch.int64, device=true_ids.device)
    table.scatter_add_(0, cell.reshape(-1), ones.reshape(-1))
    return table.reshape(batch, num_true, num_pred)


def _work_dtype(device: torch.device) -> torch.dtype:
    """float64 for exact-enough pair counts, except on MPS, which has no float64."""
    return torch.float32 if device.type == "mps" else torch.float64
