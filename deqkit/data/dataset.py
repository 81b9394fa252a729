"""The procedural scenes as a ``torch.utils.data.Dataset`` of padded, batch-collatable tensors.

Item ``i`` of a split is a pure function of ``(config.seed, split, i)``: the same item on every call,
in every worker and in any order. Per-object fields are padded to ``config.max_objects`` slots; slot
``k`` is object id ``k + 1`` in the mask, and absent slots have ``present = False``.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch
from torch.utils.data import Dataset

from deqkit.data.config import SceneConfig, check_split
from deqkit.data.scenes import Scene, sample_scene, scene_rng

Item = dict[str, torch.Tensor]


def property_layout(config: SceneConfig) -> dict[str, slice]:
    """Where each property sits in the per-object vector ``properties[..., D]`` (D = len(shapes) + 7).

    ``shape``: one-hot over ``config.shapes``; ``color``: r, g, b in [0, 1]; ``size``: circumradius as a
    fraction of the image side; ``position``: x (column), y (row) in [0, 1]; ``present``: 1 for a real
    object, 0 for padding (padding rows are all zeros).
    """
    k = len(config.shapes)
    return {
        "shape": slice(0, k),
        "color": slice(k, k + 3),
        "size": slice(k + 3, k + 4),
        "position": slice(k + 4, k + 6),
        "present": slice(k + 6, k + 7),
    }


def property_dim(config: SceneConfig) -> int:
    """Length D of the per-object property vector (see ``property_layout``)."""
    return len(config.shapes) + 7


def scene_to_item(scene: Scene, config: SceneConfig) -> Item:
    """Tensors of one scene, objects padded to ``config.max_objects`` slots.

    image float32 [3, H, W]; mask int64 [H, W]; shape int64 [M] (-1 = absent); color float32 [M, 3];
    size, x, y float32 [M]; depth int64 [M] (-1 = absent); present bool [M]; num_objects int64 [];
    properties float32 [M, D] laid out as in ``property_layout``.
    """
    m, n = config.max_objects, scene.num_objects

    def pad(values: np.ndarray, fill: float, dtype: np.dtype) -> torch.Tensor:
        out = np.full((m, *values.shape[1:]), fill, dtype=dtype)
        out[:n] = values
        return torch.from_numpy(out)

    present = np.zeros(m, dtype=bool)
    present[:n] = True
    props = np.zeros((m, property_dim(config)), dtype=np.float32)
    lay = property_layout(config)
    props[np.arange(n), scene.shape] = 1.0  # one-hot occupies the first len(shapes) columns
    props[:n, lay["color"]] = scene.color
    props[:n, lay["size"]] = scene.size[:, None]
    props[:n, lay["position"]] = np.stack([scene.x, scene.y], axis=1)
    props[:n, lay["present"]] = 1.0
    return {
        "image": torch.from_numpy(scene.image),
        "mask": torch.from_numpy(scene.mask),
        "shape": pad(scene.shape, -1, np.int64),
        "color": pad(scene.color, 0.0, np.float32),
        "size": pad(scene.size, 0.0, np.float32),
        "x": pad(scene.x, 0.0, np.float32),
        "y": pad(scene.y, 0.0, np.float32),
        "depth": pad(scene.depth, -1, np.int64),
        "present": torch.from_numpy(present),
        "num_objects": torch.tensor(n, dtype=torch.int64),
        "properties": torch.from_numpy(props),
    }


def render_item(config: SceneConfig, split: str, index: int) -> Item:
    """Item ``index`` of ``split`` (no bounds check against the split size)."""
    return scene_to_item(sample_scene(config, scene_rng(config, split, index)), config)


def render_batch(config: SceneConfig, split: str, indices: Sequence[int]) -> Item:
    """Items ``indices`` of ``split`` stacked on a new batch dimension (same as collating ``render_item``)."""
    items = [render_item(config, split, int(i)) for i in indices]
    return {key: torch.stack([it[key] for it in items]) for key in items[0]}


class SceneDataset(Dataset):
    """Split ``split`` ("train" | "val" | "test") of the procedural scenes of ``config``.

    With ``cache=True`` every item is rendered once at construction and kept as stacked tensors; image
    and mask take ``20 * H * W`` bytes per scene (about 82 MB for 1000 scenes at 64 px).
    """

    def __init__(self, config: SceneConfig, split: str, cache: bool = False) -> None:
        if not isinstance(config, SceneConfig):
            raise TypeError(f"config must be a SceneConfig, got {type(config).__name__}")
        self.config = config
        self.split = check_split(split)
        self._len = config.split_size(split)
        self._cache: Item | None = None
        if cache and self._len > 0:
            self._cache = render_batch(config, split, range(self._len))

    def __len__(self) -> int:
        return self._len

    def __getitem__(self, index: int) -> Item:
        index = int(index)
        if index < 0:
            index += self._len
        if not 0 <= index < self._len:
            raise IndexError(f"index {index} out of range for the {self.split} split of size {self._len}")
        if self._cache is not None:
            return {key: value[index] for key, value in self._cache.items()}
        return render_item(self.config, self.split, index)
