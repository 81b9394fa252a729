"""The FG-ARI reference segmentations of benchmarks/fg_ari_ceilings.py do what its table claims."""

from __future__ import annotations

import importlib.util
import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
_spec = importlib.util.spec_from_file_location("fg_ari_ceilings", ROOT / "benchmarks" / "fg_ari_ceilings.py")
ceilings = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(ceilings)


def test_colour_components_merge_touching_equal_colours_and_split_others():
    image = np.zeros((3, 6, 8), np.float32)
    image[0, 1:3, 1:3] = 1.0  # red square
    image[0, 1:3, 3:5] = 1.0  # touching red square: one component with the first
    image[2, 4:6, 6:8] = 1.0  # blue square
    ids = ceilings.colour_components(image)
    assert ids[1, 1] == ids[2, 4] != ids[5, 7] != ids[0, 0]
    assert len(np.unique(ids)) == 3  # background, the red pair, the blue square


def test_erosion_removes_exactly_the_rim_and_half_res_masks_are_exact_on_aligned_blocks():
    mask = np.zeros((6, 6), np.int64)
    mask[1:5, 1:5] = 2
    out = ceilings.eroded(mask)
    assert (out == 2).sum() == 4 and out[2:4, 2:4].tolist() == [[2, 2], [2, 2]]
    blocks = torch.zeros(1, 8, 8, dtype=torch.int64)
    blocks[0, 2:6, 2:6] = 1  # even-aligned: survives 2x area downsampling, bilinear upsampling blurs only the rim
    soft = ceilings.half_resolution(blocks, 1)
    assert soft.shape == (1, 2, 8, 8)
    torch.testing.assert_close(soft.sum(1), torch.ones(1, 8, 8))
    assert (soft.argmax(1)[0, 3:5, 3:5] == 1).all() and (soft.argmax(1)[0, :1] == 0).all()


def test_script_writes_one_row_per_setting(tmp_path):
    out = tmp_path / "c.json"
    proc = subprocess.run([sys.executable, str(ROOT / "benchmarks" / "fg_ari_ceilings.py"), "--images", "6",
                           "--json", str(out)], cwd=ROOT, capture_output=True, text=True, timeout=120,
                          env={"PYTHONPATH": str(ROOT), "PATH": ""})
    assert proc.returncode == 0, proc.stderr[-2000:]
    rows = json.loads(out.read_text())["rows"]
    assert len(rows) == len(ceilings.SETTINGS)
    for row in rows:
        assert -1.0 <= row["eroded_1px"] <= row["half_res"] <= 1.0 and 0.0 < row["colour_components"] <= 1.0
