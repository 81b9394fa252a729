"""Average precision of a predicted set of objects, as in the set prediction experiments of slot attention
(Locatello et al. 2020, §4.2) and DSPN/iDSPN (Zhang et al. 2019, 2022) on CLEVR.

Every predicted object of every image is ranked by its presence confidence. Going down the ranking, a
prediction is a true positive when some real object of its image has *all* discrete attributes equal to
the prediction's (argmax) classes, the nearest such object lies closer than the distance threshold, and
that object has not been claimed by a higher-ranked prediction; otherwise (no attribute match, too far,
or its nearest match already claimed) it is a false positive. AP is the area under the precision envelope
of the precision-recall curve (VOC style), recall being over all real objects of the dataset. This is a
dataset-level metric: it ranks the predictions of all images together, so it is not a mean over images.

Ties in confidence are ranked as google-research's ``average_precision_clevr`` ranks them: it reverses an
ascending ``np.argsort``, so among equal confidences the *last* prediction (by image, then slot) comes
first. deqkit reverses a stable ascending sort, which is exactly the reference's order wherever numpy's
default sort keeps ties in place (e.g. a handful of predictions); on long arrays numpy's default sort is
not stable and the reference's tie order depends on the numpy build. Ties are not rare: ``sigmoid`` of a
presence logit above ~17 is exactly 1.0 in float32. :func:`tied_predictions` counts them, so a run can
say whether the order of ties could have moved its AP.
"""

from __future__ import annotations

import math
from typing import Sequence

import numpy as np
import torch

THRESHOLDS: tuple[float, ...] = (math.inf, 1.0, 0.5, 0.25, 0.125)


def _nearest_matches(pred_classes: np.ndarray, pred_coords: np.ndarray, true_classes: np.ndarray,
                     true_coords: np.ndarray, present: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """For every prediction [B, K]: the index of the nearest real object of its image with all attributes
    equal (lowest index among equal distances) and its distance; -1 and inf where there is none."""
    same = (pred_classes[:, :, None, :] == true_classes[:, None, :, :]).all(-1) & present[:, None, :]
    dist = np.linalg.norm(pred_coords[:, :, None, :] - true_coords[:, None, :, :], axis=-1)
    dist = np.where(same, dist, np.inf)
    best = dist.argmin(-1) if dist.shape[-1] else np.zeros(dist.shape[:2], dtype=np.int64)
    best_dist = np.take_along_axis(dist, best[..., None], -1)[..., 0] if dist.shape[-1] else np.full(dist.shape[:2], np.inf)
    return np.where(np.isfinite(best_dist), best, -1), best_dist


def precision_envelope_ap(precision: np.ndarray, recall: np.ndarray) -> float:
    """VOC-style AP: precision made non-increasing from the right, summed over the steps of recall."""
    recall = np.concatenate([[0.0], recall, [1.0]])
    precision = np.concatenate([[0.0], precision, [0.0]])
    precision = np.maximum.accumulate(precision[::-1])[::-1]
    steps = np.flatnonzero(recall[1:] != recall[:-1])
    return float(np.sum(precision[steps + 1] * (recall[steps + 1] - recall[steps])))


def average_precision(
    confidence: torch.Tensor,
    pred_classes: torch.Tensor,
    pred_coords: torch.Tensor,
    true_classes: torch.Tensor,
    true_coords: torch.Tensor,
    present: torch.Tensor,
    thresholds: Sequence[float] = THRESHOLDS,
) -> dict[float, float]:
    """AP of predicted sets at each distance threshold (``inf``: attributes only).

    Args:
        confidence: ``[B, K]`` presence confidence of each predicted object (any monotone score).
        pred_classes: ``[B, K, A]`` integer class of each of A discrete attributes (e.g. the argmax).
        pred_coords: ``[B, K, C]`` coordinates, in the units of the thresholds.
        true_classes: ``[B, M, A]``, true_coords ``[B, M, C]``: the real objects, padded to M.
        present: ``[B, M]`` bool, which of the M rows are real objects.

    Returns ``{threshold: AP}``; AP is 0 when the dataset has no real object.
    """
    conf = confidence.detach().double().cpu().numpy()
    batch, k = conf.shape
    if pred_classes.shape[:2] != (batch, k) or pred_coords.shape[:2] != (batch, k):
        raise ValueError(f"average_precision: predictions must be [B, K, ...] with B, K = {batch}, {k}; got "
                         f"classes {tuple(pred_classes.shape)}, coords {tuple(pred_coords.shape)}")
    best, best_dist = _nearest_matches(pred_classes.cpu().numpy(), pred_coords.detach().double().cpu().numpy(),
                                       true_classes.cpu().numpy(), true_coords.detach().double().cpu().numpy(),
                                       present.cpu().numpy().astype(bool))
    order = np.argsort(conf.reshape(-1), kind="stable")[::-1]  # the reference's order of ties (module doc)
    image = order // k
    best, best_dist = best.reshape(-1)[order], best_dist.reshape(-1)[order]
    real = int(present.sum())
    result = {}
    for threshold in thresholds:
        hit = (best >= 0) & (best_dist < threshold)
        tp = np.zeros(len(order))
        claimed: set[tuple[int, int]] = set()
        for i in np.flatnonzero(hit):  # a second prediction on a claimed object is a false positive
            key = (int(image[i]), int(best[i]))
            if key not in claimed:
                claimed.add(key)
                tp[i] = 1.0
        if real == 0:
            result[float(threshold)] = 0.0
            continue
        cum_tp = np.cumsum(tp)
        cum_fp = np.cumsum(1.0 - tp)
        result[float(threshold)] = precision_envelope_ap(cum_tp / (cum_tp + cum_fp), cum_tp / real)
    return result


def tied_predictions(confidence: torch.Tensor) -> int:
    """How many predictions share their confidence with at least one other prediction of the dataset
    (``confidence [B, K]``, all images ranked together as in :func:`average_precision`)."""
    _, inverse, counts = np.unique(confidence.detach().double().cpu().numpy().reshape(-1), return_inverse=True,
                                   return_counts=True)
    return int((counts[inverse] > 1).sum())


def threshold_name(threshold: float) -> str:
    """``inf`` -> ``"ap_inf"``, ``0.125`` -> ``"ap_0.125"``: the metric names used in logs and tables."""
    return "ap_inf" if math.isinf(threshold) else f"ap_{threshold:g}"
