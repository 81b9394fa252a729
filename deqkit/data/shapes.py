"""Analytic rasterisation of flat 2-D shapes: each shape is an inequality on pixel-centre coordinates.

A shape of ``size`` s centred at (x, y) (fractions of the image side, origin top-left, y down) covers the
pixel whose centre (px, py) satisfies ``inside((px - x) / s, (py - y) / s)``. Every ``inside`` test is
contained in the unit disc, so ``size`` is the radius of the circumscribed circle and the shape never
leaves the square ``[x - s, x + s] x [y - s, y + s]``, which is the only region evaluated.
"""

from __future__ import annotations

import math
from typing import Callable, Sequence

import numpy as np

_SQRT3_2 = math.sqrt(3.0) / 2.0


def _disc(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + v * v <= 1.0


def _square(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    h = 1.0 / math.sqrt(2.0)  # corners on the unit circle
    return (np.abs(u) <= h) & (np.abs(v) <= h)


def _triangle(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    # Equilateral, apex up (v = -1), inscribed in the unit circle: three half-planes at distance 1/2.
    return (v <= 0.5) & (_SQRT3_2 * u - 0.5 * v <= 0.5) & (-_SQRT3_2 * u - 0.5 * v <= 0.5)


def _diamond(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return np.abs(u) + np.abs(v) <= 1.0


def _ellipse(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    return u * u + 4.0 * v * v <= 1.0  # semi-axes 1 (horizontal) and 1/2 (vertical)


def _cross(u: np.ndarray, v: np.ndarray) -> np.ndarray:
    au, av = np.abs(u), np.abs(v)
    arm, half_width = 0.95, 0.3  # 0.95^2 + 0.3^2 < 1: the arm corners stay inside the unit circle
    return ((au <= arm) & (av <= half_width)) | ((au <= half_width) & (av <= arm))


INSIDE: dict[str, Callable[[np.ndarray, np.ndarray], np.ndarray]] = {
    "disc": _disc,
    "square": _square,
    "triangle": _triangle,
    "diamond": _diamond,
    "ellipse": _ellipse,
    "cross": _cross,
}


def rasterize(
    names: Sequence[str], x: np.ndarray, y: np.ndarray, size: np.ndarray, image_size: int,
    out: np.ndarray | None = None, rows: Sequence[int] | None = None,
) -> np.ndarray:
    """Coverage masks ``bool [n, H, W]`` (H = W = image_size) of n shapes, ignoring occlusion.

    ``names``, ``x``, ``y``, ``size`` have length n. With ``out`` and ``rows``, only those objects are
    redrawn into the existing ``out`` (used when a few objects of a scene are resampled).
    """
    n, s = len(names), image_size
    if out is None:
        out = np.zeros((n, s, s), dtype=bool)
    centres = (np.arange(s, dtype=np.float64) + 0.5) / s
    for i in range(n) if rows is None else rows:
        out[i] = False
        # Pixel index range whose centres can fall inside [c - size, c + size].
        c0 = max(int(math.floor((x[i] - size[i]) * s)), 0)
        c1 = min(int(math.ceil((x[i] + size[i]) * s)) + 1, s)
        r0 = max(int(math.floor((y[i] - size[i]) * s)), 0)
        r1 = min(int(math.ceil((y[i] + size[i]) * s)) + 1, s)
        if c0 >= c1 or r0 >= r1:
            continue
        u = (centres[c0:c1] - x[i]) / size[i]
        v = (centres[r0:r1] - y[i]) / size[i]
        out[i, r0:r1, c0:c1] = INSIDE[names[i]](u[None, :], v[:, None])
    return out
