"""Data for object-centric models: procedural multi-object scenes and folders of real images.

``SceneDataset(SceneConfig(...), "train")`` yields dicts of tensors (image, instance mask, padded
per-object properties); ``ImageFolderDataset(root, split, image_size)`` reads PNG/JPEG folders with the
same keys. See docs/data.md.
"""

from deqkit.data.config import BACKGROUNDS, COLOR_MODES, SHAPES, SPLITS, SceneConfig
from deqkit.data.dataset import (
    SceneDataset,
    property_dim,
    property_layout,
    render_batch,
    render_item,
    scene_to_item,
)
from deqkit.data.folder import DataError, ImageFolderDataset, split_files
from deqkit.data.scenes import PALETTE, Scene, sample_scene, scene_rng

__all__ = [
    "BACKGROUNDS",
    "COLOR_MODES",
    "DataError",
    "ImageFolderDataset",
    "PALETTE",
    "SHAPES",
    "SPLITS",
    "Scene",
    "SceneConfig",
    "SceneDataset",
    "property_dim",
    "property_layout",
    "render_batch",
    "render_item",
    "sample_scene",
    "scene_rng",
    "scene_to_item",
    "split_files",
]
