"""benchmarks/slot_attention_errors.py counts merged, split and rim errors as its docstring defines them."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("slot_attention_errors", ROOT / "benchmarks" / "slot_attention_errors.py")
errors = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(errors)


def test_merges_splits_and_rims_on_a_hand_made_scene():
    true = torch.zeros(1, 4, 8, dtype=torch.int64)
    true[0, :, 0:2] = 1  # object 1: 8 pixels
    true[0, :, 3:5] = 2  # object 2: 8 pixels
    true[0, :, 6:8] = 3  # object 3: 8 pixels
    pred = torch.zeros(1, 4, 8, dtype=torch.int64)  # slot 0 holds the background
    pred[0, :, 0:2] = 1
    pred[0, :, 3:5] = 1  # object 2 shares object 1's slot: one merge
    pred[0, :2, 6:8] = 2
    pred[0, 2:, 6:8] = 3  # object 3 split half and half
    pred[0, 0, 0] = 0  # one pixel of object 1 lost to the background slot
    counts = errors.object_errors(true, pred, num_slots=4)
    assert counts["objects"][3] == 3 and counts["images"][3] == 1
    assert counts["merged"][3] == 1 and counts["split"][3] == 1
    assert abs(counts["rim"][3] - 1 / 24) < 1e-9


def test_a_perfect_segmentation_has_no_errors():
    true = torch.zeros(2, 4, 4, dtype=torch.int64)
    true[:, :2, :2], true[:, 2:, 2:] = 1, 2
    counts = errors.object_errors(true, true + 1, num_slots=3)  # ids shifted: still a perfect partition
    assert counts["merged"][2] == counts["split"][2] == 0 and counts["rim"][2] == 0


def test_objects_touch_within_the_gap_only():
    apart = torch.zeros(1, 6, 9, dtype=torch.int64)
    apart[0, :, 0:2], apart[0, :, 5:7] = 1, 2  # 3 empty columns between the objects
    near = apart.clone()
    near[0, :, 3:4] = 1  # object 1 also covers column 3: one empty column (4) before object 2
    overlapping = torch.zeros(1, 6, 9, dtype=torch.int64)
    overlapping[0, :, 0:4], overlapping[0, :, 4:6] = 1, 2  # adjacent (occlusion leaves no gap)
    single = torch.zeros(1, 6, 9, dtype=torch.int64)
    single[0, 2:4, 2:4] = 1
    no_background = torch.ones(1, 6, 9, dtype=torch.int64)
    no_background[0, :, 5:] = 2  # two objects fill the image: no id 0 to skip
    scenes = torch.cat([apart, near, overlapping, single, no_background])
    assert errors.objects_touch(scenes, gap=1).tolist() == [False, False, True, False, True]
    assert errors.objects_touch(scenes, gap=2).tolist() == [False, True, True, False, True]
    assert errors.objects_touch(scenes, gap=4).tolist() == [True, True, True, False, True]
