"""Sampling and painting one procedural multi-object scene (numpy; no torch).

A scene is drawn from a ``numpy.random.Generator``: objects are placed in paint order (back to front),
the ones left with too few visible pixels are moved and resized until every object is visible, and
finally the objects get shuffled instance ids so that an id says nothing about depth. The same
generator state always gives the same scene, which is what makes datasets deterministic by index.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from deqkit.data.config import SPLITS, SceneConfig
from deqkit.data.shapes import rasterize
from deqkit.errors import ConfigError

# Eight saturated colours (value >= 0.8), far from the black default and the dull random backgrounds.
PALETTE = np.array(
    [
        [0.90, 0.10, 0.10],  # red
        [0.10, 0.80, 0.20],  # green
        [0.15, 0.30, 0.95],  # blue
        [0.95, 0.90, 0.10],  # yellow
        [0.10, 0.85, 0.90],  # cyan
        [0.90, 0.15, 0.85],  # magenta
        [1.00, 0.55, 0.05],  # orange
        [0.55, 0.20, 0.90],  # purple
    ],
    dtype=np.float32,
)

# Rounds of "move the objects that are not visible enough" before a scene is declared impossible.
MAX_PLACEMENT_ROUNDS = 200


@dataclass(frozen=True)
class Scene:
    """One rendered scene with n objects, listed in instance-id order (object i has mask id i + 1).

    image: float32 [3, H, W] in [0, 1]; mask: int64 [H, W], 0 = background, i + 1 = object i where it is
    visible; shape: int64 [n] index into ``config.shapes``; color: float32 [n, 3]; size, x, y:
    float32 [n] (fractions of the image side; x is the column, y the row, both of the centre);
    depth: int64 [n], the paint order (0 is painted first, i.e. furthest back).
    """

    image: np.ndarray
    mask: np.ndarray
    shape: np.ndarray
    color: np.ndarray
    size: np.ndarray
    x: np.ndarray
    y: np.ndarray
    depth: np.ndarray

    @property
    def num_objects(self) -> int:
        return len(self.shape)


def scene_rng(config: SceneConfig, split: str, index: int) -> np.random.Generator:
    """The generator of scene ``index`` of ``split``: a pure function of (seed, split, index)."""
    return np.random.default_rng([config.seed, SPLITS.index(split), index])


def hsv_to_rgb(h: np.ndarray, s: np.ndarray, v: np.ndarray) -> np.ndarray:
    """HSV in [0, 1] (arrays of one shape ``[...]``) -> RGB float32 ``[..., 3]``."""
    h6 = (np.asarray(h, dtype=np.float64) % 1.0) * 6.0
    s, v = np.asarray(s, dtype=np.float64), np.asarray(v, dtype=np.float64)
    # Standard hexcone: each channel is v minus a piecewise-linear share of the saturation.
    k = (np.array([5.0, 3.0, 1.0]) + h6[..., None]) % 6.0
    rgb = v[..., None] - (v * s)[..., None] * np.clip(np.minimum(k, 4.0 - k), 0.0, 1.0)
    return rgb.astype(np.float32)


def sample_scene(config: SceneConfig, rng: np.random.Generator) -> Scene:
    """Draw and paint one scene of ``config`` from ``rng`` (see the module docstring)."""
    s = config.image_size
    n = int(rng.integers(config.min_objects, config.max_objects + 1))
    # Properties in paint order p = 0 .. n-1 (back to front).
    shape = rng.integers(0, len(config.shapes), size=n)
    color = _sample_colors(config, rng, n)
    size = _sample_sizes(config, rng, n)
    x, y = rng.uniform(size, 1.0 - size), rng.uniform(size, 1.0 - size)
    names = [config.shapes[k] for k in shape]
    cover = rasterize(names, x, y, size, s)
    for _ in range(MAX_PLACEMENT_ROUNDS):
        front = _front_object(cover)
        visible = np.bincount(front.ravel(), minlength=n + 1)[1:]
        area = cover.sum(axis=(1, 2))
        bad = np.flatnonzero((visible < config.min_visible_pixels) | (visible < config.min_visible_fraction * area))
        if bad.size == 0:
            break
        # Move and resize only the hidden objects; shapes and colours keep their exact distribution.
        size[bad] = _sample_sizes(config, rng, bad.size)
        x[bad] = rng.uniform(size[bad], 1.0 - size[bad])
        y[bad] = rng.uniform(size[bad], 1.0 - size[bad])
        rasterize(names, x, y, size, s, out=cover, rows=bad)
    else:
        raise ConfigError(
            f"could not place {n} visible objects in {MAX_PLACEMENT_ROUNDS} rounds at image_size={s}, "
            f"size_range={config.size_range}: objects too crowded or smaller than min_visible_pixels="
            f"{config.min_visible_pixels}; change max_objects, size_range or min_visible_fraction"
        )

    # Instance ids: slot i shows the object painted at position depth[i].
    depth = rng.permutation(n)
    mask_id = np.concatenate([[0], np.argsort(depth) + 1])  # paint position + 1 -> mask id
    mask = mask_id[front]
    background = _sample_background(config, rng)
    # One colour lookup per pixel; column 0 is the background (a placeholder when it is not flat).
    lookup = np.concatenate([background[:, :1, 0], color.T], axis=1)
    image = np.take(lookup, front, axis=1)
    if background.shape[1:] != (1, 1):
        image = np.where(front > 0, image, background)
    return Scene(
        image=image,
        mask=mask,
        shape=shape[depth].astype(np.int64),
        color=color[depth],
        size=size[depth].astype(np.float32),
        x=x[depth].astype(np.float32),
        y=y[depth].astype(np.float32),
        depth=depth.astype(np.int64),
    )


def _sample_sizes(config: SceneConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    if config.size_values:
        return np.asarray(config.size_values, dtype=np.float64)[rng.integers(0, len(config.size_values), size=n)]
    return rng.uniform(*config.size_range, size=n)


def _front_object(cover: np.ndarray) -> np.ndarray:
    """For coverage ``bool [n, H, W]`` in paint order: ``[H, W]`` paint position + 1 of the frontmost
    covering object, 0 where nothing covers. (A max over weighted uint8 planes; far faster than argmax.)"""
    n = cover.shape[0]
    weights = np.arange(1, n + 1, dtype=np.min_scalar_type(n))[:, None, None]
    return np.max(cover.view(np.uint8) * weights, axis=0)


def _sample_colors(config: SceneConfig, rng: np.random.Generator, n: int) -> np.ndarray:
    if config.colors == "palette":
        return PALETTE[rng.integers(0, len(PALETTE), size=n)]
    # Saturation and value >= 0.6 keep objects distinct from the dull "colored" backgrounds.
    return hsv_to_rgb(rng.uniform(0, 1, n), rng.uniform(0.6, 1, n), rng.uniform(0.6, 1, n))


def _dull_color(rng: np.random.Generator) -> np.ndarray:
    return hsv_to_rgb(rng.uniform(0, 1), rng.uniform(0.0, 0.5), rng.uniform(0.15, 0.45))


def _sample_background(config: SceneConfig, rng: np.random.Generator) -> np.ndarray:
    """Background image float32 ``[3, H, W]`` (or ``[3, 1, 1]``, broadcast by the caller)."""
    if config.background == "plain":
        return np.asarray(config.background_color, dtype=np.float32)[:, None, None]
    if config.background == "colored":
        return _dull_color(rng)[:, None, None]
    # "gradient": a linear blend between two dull colours along a random direction.
    c0, c1 = _dull_color(rng), _dull_color(rng)
    angle = rng.uniform(0, 2 * np.pi)
    s = config.image_size
    centres = (np.arange(s) + 0.5) / s - 0.5
    t = 0.5 + (np.cos(angle) * centres[None, :] + np.sin(angle) * centres[:, None]) / np.sqrt(2.0)
    return (c0[:, None, None] * (1 - t) + c1[:, None, None] * t).astype(np.float32)
