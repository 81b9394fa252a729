"""The typed configuration of the procedural multi-object scenes, validated when it is built.

Every field has one default here; a wrong value raises a one-line ``ConfigError`` (a
``ValueError``) that names the field and what would be valid. Build it from nested dicts or
``--set`` strings with ``deqkit.train.config.from_dict`` / ``resolve_config``, which reject unknown keys.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal, get_args

from deqkit.errors import ConfigError

SHAPES: tuple[str, ...] = ("disc", "square", "triangle", "diamond", "ellipse", "cross")
ColorMode = Literal["palette", "hsv"]
Background = Literal["plain", "colored", "gradient"]
COLOR_MODES: tuple[str, ...] = get_args(ColorMode)
BACKGROUNDS: tuple[str, ...] = get_args(Background)
SPLITS: tuple[str, ...] = ("train", "val", "test")
# Largest dataset a config may ask for (procedural data is drawn per item, but a config from a checkpoint
# must not be able to ask for 10^10 items); the presets use at most 1_000_000.
MAX_DATASET_SIZE = 10_000_000


@dataclass(frozen=True)
class SceneConfig:
    """How scenes are drawn and how many there are per split.

    ``size_range`` is the radius of each object's circumscribed circle as a fraction of the image side.
    ``size_values``, when not empty, replaces it with a choice among these radii (CLEVR has two sizes,
    small and large, which makes size a discrete attribute for set prediction).
    An object counts as visible when at least ``min_visible_pixels`` pixels and ``min_visible_fraction``
    of its own area stay uncovered by the objects painted in front of it.
    """

    image_size: int = 64
    min_objects: int = 2
    max_objects: int = 6
    shapes: tuple[str, ...] = SHAPES
    # "palette": 8 fixed saturated colours; "hsv": random hue, saturation and value in [0.6, 1].
    colors: ColorMode = "palette"
    # "plain": background_color; "colored": a dull random colour per image; "gradient": two of them blended.
    background: Background = "plain"
    background_color: tuple[float, float, float] = (0.0, 0.0, 0.0)
    size_range: tuple[float, float] = (0.1, 0.2)
    size_values: tuple[float, ...] = ()
    min_visible_pixels: int = 4
    min_visible_fraction: float = 0.25
    seed: int = 0
    train_size: int = 10_000
    val_size: int = 1_000
    test_size: int = 1_000

    def __post_init__(self) -> None:
        # Lists from YAML/JSON become tuples so the config stays hashable and immutable.
        for name in ("shapes", "background_color", "size_range", "size_values"):
            value = getattr(self, name)
            if isinstance(value, list):
                object.__setattr__(self, name, tuple(value))
        _check_int(self, "image_size", low=8)
        _check_int(self, "min_objects", low=1)
        _check_int(self, "max_objects", low=1)
        if self.min_objects > self.max_objects:
            raise ConfigError(
                f"SceneConfig.min_objects={self.min_objects} must be <= max_objects={self.max_objects}"
            )
        if not isinstance(self.shapes, tuple) or not self.shapes:
            raise ConfigError(f"SceneConfig.shapes must be a non-empty sequence drawn from {SHAPES}")
        for s in self.shapes:
            if s not in SHAPES:
                raise ConfigError(f"SceneConfig.shapes: unknown shape {s!r}; valid choices are {SHAPES}")
        if len(set(self.shapes)) != len(self.shapes):
            raise ConfigError(f"SceneConfig.shapes has duplicates: {self.shapes}")
        _check_choice(self, "colors", COLOR_MODES)
        _check_choice(self, "background", BACKGROUNDS)
        bg = self.background_color
        if not (isinstance(bg, tuple) and len(bg) == 3 and all(_is_real(c) and 0 <= c <= 1 for c in bg)):
            raise ConfigError(f"SceneConfig.background_color must be 3 numbers in [0, 1], got {bg!r}")
        sr = self.size_range
        if not (isinstance(sr, tuple) and len(sr) == 2 and all(_is_real(v) for v in sr)
                and 0 < sr[0] <= sr[1] <= 0.5):
            raise ConfigError(f"SceneConfig.size_range must be (low, high) with 0 < low <= high <= 0.5, got {sr!r}")
        sv = self.size_values
        if not (isinstance(sv, tuple) and all(_is_real(v) and 0 < v <= 0.5 for v in sv)):
            raise ConfigError(f"SceneConfig.size_values must be radii in (0, 0.5] (or empty), got {sv!r}")
        _check_int(self, "min_visible_pixels", low=1)
        if not (_is_real(self.min_visible_fraction) and 0 <= self.min_visible_fraction <= 1):
            raise ConfigError(
                f"SceneConfig.min_visible_fraction must be in [0, 1], got {self.min_visible_fraction!r}"
            )
        _check_int(self, "seed", low=0)
        for name in ("train_size", "val_size", "test_size"):
            _check_int(self, name, low=0, high=MAX_DATASET_SIZE)

    def split_size(self, split: str) -> int:
        """Number of scenes in ``split`` ("train", "val" or "test")."""
        return getattr(self, f"{check_split(split)}_size")


def check_split(split: str) -> str:
    """Return ``split`` if it is one of ``SPLITS``, else raise a one-line ConfigError."""
    if split not in SPLITS:
        raise ConfigError(f"split must be one of {SPLITS}, got {split!r}")
    return split


def _is_real(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _check_int(cfg: SceneConfig, name: str, low: int, high: int | None = None) -> None:
    v = getattr(cfg, name)
    if not isinstance(v, int) or isinstance(v, bool) or v < low or (high is not None and v > high):
        bounds = f">= {low}" if high is None else f"in [{low}, {high}]"
        raise ConfigError(f"SceneConfig.{name} must be an integer {bounds}, got {v!r}")


def _check_choice(cfg: SceneConfig, name: str, choices: tuple[str, ...]) -> None:
    v = getattr(cfg, name)
    if v not in choices:
        raise ConfigError(f"SceneConfig.{name}: unknown value {v!r}; valid choices are {choices}")
