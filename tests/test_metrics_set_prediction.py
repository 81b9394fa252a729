"""Average precision of predicted object sets: hand-built cases with hand-computed AP, and a literal port
of the reference implementation (Locatello et al.'s ``average_precision_clevr``) on random sets."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from deqkit.metrics.set_prediction import (THRESHOLDS, average_precision, precision_envelope_ap, threshold_name,
                                           tied_predictions)

# one image, three real objects: (shape, colour) classes and (x, y) coordinates
CLASSES = torch.tensor([[[0, 1], [2, 3], [1, 1]]])
COORDS = torch.tensor([[[0.0, 0.0], [2.0, 0.0], [0.0, 2.0]]])
PRESENT = torch.tensor([[True, True, True]])


def ap(conf, classes, coords, true_classes=CLASSES, true_coords=COORDS, present=PRESENT):
    return average_precision(torch.tensor(conf, dtype=torch.float32), torch.as_tensor(classes),
                             torch.as_tensor(coords, dtype=torch.float32), true_classes, true_coords, present)


def test_perfect_and_shuffled_predictions_score_one_at_every_threshold():
    # two images; the second has two real objects and one padding row; a low-confidence junk slot each
    true_classes = torch.cat([CLASSES, torch.tensor([[[3, 0], [3, 0], [0, 0]]])])
    true_coords = torch.cat([COORDS, torch.tensor([[[1.0, 1.0], [3.0, 3.0], [0.0, 0.0]]])])
    present = torch.tensor([[True, True, True], [True, True, False]])
    junk_classes, junk_coords = torch.tensor([[[5, 5]], [[5, 5]]]), torch.zeros(2, 1, 2)
    classes = torch.cat([true_classes, junk_classes], 1)
    coords = torch.cat([true_coords, junk_coords], 1)
    conf = torch.tensor([[0.9, 0.8, 0.95, 0.1], [0.7, 0.99, 0.05, 0.2]])  # padding row predicted absent
    assert average_precision(conf, classes, coords, true_classes, true_coords, present) == {t: 1.0 for t in THRESHOLDS}
    perm = torch.tensor([3, 1, 0, 2])  # the same predictions in other slots
    assert average_precision(conf[:, perm], classes[:, perm], coords[:, perm], true_classes, true_coords,
                             present) == {t: 1.0 for t in THRESHOLDS}


def test_one_wrong_attribute_is_a_false_positive_at_every_threshold():
    wrong = [[[0, 1], [2, 4], [1, 1]]]  # second object's colour wrong
    # ranked TP, FP, TP: precision 1, 1/2, 2/3; recall 1/3, 1/3, 2/3 -> AP = 1/3 * 1 + 1/3 * 2/3 = 5/9
    assert ap([[0.9, 0.8, 0.7]], wrong, COORDS) == pytest.approx({t: 5 / 9 for t in THRESHOLDS})
    # ranked FP first: precision 0, 1/2, 2/3 -> envelope 2/3 over recall 0..2/3 = 4/9
    assert ap([[0.5, 0.9, 0.7]], wrong, COORDS) == pytest.approx({t: 4 / 9 for t in THRESHOLDS})


def test_distance_thresholds_are_strict_and_in_coordinate_units():
    coords = COORDS.clone()
    coords[0, 2] += torch.tensor([0.3, 0.4])  # 0.5 away: a hit below inf and 1, a miss at 0.5 and below
    result = ap([[0.9, 0.8, 0.95]], CLASSES, coords)
    assert result[math.inf] == result[1.0] == 1.0
    # ranked FP, TP, TP: precision 0, 1/2, 2/3, recall 0, 1/3, 2/3 -> 2/3 * 2/3
    assert result[0.5] == result[0.25] == result[0.125] == pytest.approx(4 / 9)


def test_one_extra_and_one_missing_object():
    # predictions: object 0, a non-existent object, object 1; object 2 is missed
    classes = [[[0, 1], [4, 4], [2, 3]]]
    coords = [[[0.0, 0.0], [5.0, 5.0], [2.0, 0.0]]]
    # TP, FP, TP: precision 1, 1/2, 2/3; recall 1/3, 1/3, 2/3 -> 1/3 + 1/3 * 2/3 = 5/9
    assert ap([[0.9, 0.85, 0.8]], classes, coords) == pytest.approx({t: 5 / 9 for t in THRESHOLDS})
    # the extra one ranked last: TP, TP, FP -> 2/3
    assert ap([[0.9, 0.1, 0.8]], classes, coords) == pytest.approx({t: 2 / 3 for t in THRESHOLDS})


def test_a_second_prediction_on_a_claimed_object_is_a_false_positive():
    # two objects with equal attributes; both predictions are nearest to object 0, object 1 stays unclaimed
    true_classes, true_coords = torch.tensor([[[0, 0], [0, 0]]]), torch.tensor([[[0.0, 0.0], [2.0, 0.0]]])
    result = ap([[0.9, 0.8]], [[[0, 0], [0, 0]]], [[[0.1, 0.0], [0.2, 0.0]]], true_classes, true_coords,
                torch.tensor([[True, True]]))
    assert result == pytest.approx({t: 0.5 for t in THRESHOLDS})  # TP, FP: recall 1/2 at precision 1


def test_ties_rank_as_the_reference_last_position_first():
    """One real object, two predictions at confidence 1.0 (sigmoid of a logit of 20 in float32): slot 0 wrong,
    slot 1 exact. The reference reverses an ascending argsort, so slot 1 ranks first: TP, FP -> AP 1.0 (a
    stable descending sort would rank slot 0 first: FP, TP -> 0.5)."""
    conf = torch.sigmoid(torch.tensor([[20.0, 20.0]]))
    conf_list = conf.tolist()
    assert (conf == 1.0).all()
    one = dict(true_classes=torch.tensor([[[0, 0]]]), true_coords=torch.zeros(1, 1, 2),
               present=torch.tensor([[True]]))
    assert ap(conf_list, [[[1, 0], [0, 0]]], torch.zeros(1, 2, 2), **one) == {t: 1.0 for t in THRESHOLDS}
    assert ap(conf_list, [[[0, 0], [1, 0]]], torch.zeros(1, 2, 2), **one) == pytest.approx({t: 0.5 for t in THRESHOLDS})
    # the order is the reference's own: numpy's default argsort, reversed, on these two confidences
    assert np.argsort(conf.numpy().reshape(-1))[::-1].tolist() == [1, 0]


def test_tied_predictions_counts_every_member_of_a_tie():
    assert tied_predictions(torch.tensor([[1.0, 1.0, 0.3], [0.2, 1.0, 0.3]])) == 5
    assert tied_predictions(torch.tensor([[0.9, 0.8], [0.7, 0.6]])) == 0


def test_set_prediction_summary_reports_tied_predictions():
    from applications.set_prediction.app import APP

    cfg = APP.make_config("smoke")
    outputs = [{"_confidence": torch.tensor([[1.0, 1.0, 0.2, 0.1]]), "_classes": torch.zeros(1, 4, 3, dtype=torch.long),
                "_xy": torch.zeros(1, 4, 2), "_true_classes": torch.zeros(1, 4, 3, dtype=torch.long),
                "_true_xy": torch.zeros(1, 4, 2), "_present": torch.tensor([[True, False, False, False]])}]
    assert APP.summarize(outputs, cfg)["ap_tied_predictions"] == 2


def test_envelope_ap_by_hand_and_names():
    assert precision_envelope_ap(np.array([1.0, 0.5, 2 / 3]), np.array([0.5, 0.5, 1.0])) == pytest.approx(0.5 + 0.5 * 2 / 3)
    assert [threshold_name(t) for t in THRESHOLDS] == ["ap_inf", "ap_1", "ap_0.5", "ap_0.25", "ap_0.125"]


def _reference_ap(pred, attributes, threshold):
    """Locatello et al.'s average_precision_clevr (google-research/slot_attention utils.py), transcribed
    with attribute rows ``[x, y, class_a, class_b, present]``; its reversed ascending argsort made stable (the
    order numpy's default sort gives on short arrays); -1 means no threshold."""
    batch, k = pred.shape[:2]
    flat = pred.reshape(batch * k, -1)
    order = np.argsort(flat[:, -1], kind="stable")[::-1]
    tp, fp, detected = np.zeros(len(order)), np.zeros(len(order)), set()
    for d, idx in enumerate(order):
        image, p = idx // k, flat[idx]
        best_distance, best_id = 10000, None
        for j, t in enumerate(attributes[image]):
            if t[-1] and (p[2:4] == t[2:4]).all():
                distance = np.linalg.norm(t[:2] - p[:2])
                if distance < best_distance:
                    best_distance, best_id = distance, j
        if (best_distance < threshold or threshold == -1) and best_id is not None and (image, best_id) not in detected:
            tp[d] = 1
            detected.add((image, best_id))
        else:
            fp[d] = 1
    recall = np.cumsum(tp) / attributes[:, :, -1].sum()
    precision = np.cumsum(tp) / (np.cumsum(tp) + np.cumsum(fp))
    recall, precision = [0] + recall.tolist() + [1], [0] + precision.tolist() + [0]
    for i in range(len(precision) - 1, 0, -1):
        precision[i - 1] = max(precision[i - 1], precision[i])
    return sum(precision[i + 1] * (recall[i + 1] - recall[i]) for i in range(len(recall) - 1) if recall[i + 1] != recall[i])


def test_matches_the_reference_implementation_on_random_sets():
    rng = np.random.default_rng(0)
    batch, k, m = 12, 5, 4
    true_cls = rng.integers(0, 2, (batch, m, 2))
    true_xy = rng.uniform(0, 2, (batch, m, 2))
    present = rng.uniform(size=(batch, m)) < 0.7
    pred_cls = np.where(rng.uniform(size=(batch, k, 1)) < 0.7, np.pad(true_cls, ((0, 0), (0, 1), (0, 0)))[:, :k],
                        rng.integers(0, 2, (batch, k, 2)))
    pred_xy = np.pad(true_xy, ((0, 0), (0, 1), (0, 0)))[:, :k] + rng.normal(0, 0.3, (batch, k, 2))
    conf = rng.uniform(size=(batch, k)).round(1)  # rounding makes ties
    ours = average_precision(torch.tensor(conf), torch.tensor(pred_cls), torch.tensor(pred_xy),
                             torch.tensor(true_cls), torch.tensor(true_xy), torch.tensor(present))
    pred = np.concatenate([pred_xy, pred_cls, conf[..., None]], -1)
    attributes = np.concatenate([true_xy, true_cls, present[..., None]], -1)
    for t in THRESHOLDS:
        assert ours[t] == pytest.approx(_reference_ap(pred, attributes, -1 if math.isinf(t) else t), abs=1e-12)
    assert 0 < ours[0.125] < ours[0.5] < ours[math.inf] < 1  # the random case exercises every branch
