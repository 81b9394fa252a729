"""A folder of real images (PNG/JPEG) as a dataset, with optional per-pixel instance masks.

Files are sorted by name and shuffled by a seeded permutation, then cut 70/15/15 into train/val/test
(the split proportions of Chang et al. 2022), so the split depends only on the file names and the seed.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch.utils.data import Dataset

from deqkit.data.config import check_split
from deqkit.errors import ConfigError, DeqkitError

class DataError(DeqkitError, ValueError):
    """A data file exists but cannot be used (unreadable, wrong size or wrong mode)."""


IMAGE_SUFFIXES: tuple[str, ...] = (".png", ".jpg", ".jpeg")
SPLIT_FRACTIONS: tuple[float, float, float] = (0.70, 0.15, 0.15)


def split_files(files: list[Path], split: str, seed: int = 0) -> list[Path]:
    """The files of ``split``: sort by name, permute with ``seed``, cut 70/15/15 (rounded; test takes the rest)."""
    ordered = sorted(files, key=lambda p: p.name)
    perm = np.random.default_rng(seed).permutation(len(ordered))
    n = len(ordered)
    n_train = int(round(SPLIT_FRACTIONS[0] * n))
    n_val = int(round(SPLIT_FRACTIONS[1] * n))
    bounds = {"train": (0, n_train), "val": (n_train, n_train + n_val), "test": (n_train + n_val, n)}
    lo, hi = bounds[check_split(split)]
    return [ordered[i] for i in perm[lo:hi]]


def _resize_center_crop(img: Image.Image, size: int, resample: Image.Resampling) -> Image.Image:
    """Scale the shorter side to ``size`` and cut the centred ``size x size`` square."""
    w, h = img.size
    scale = size / min(w, h)
    nw, nh = max(size, round(w * scale)), max(size, round(h * scale))
    img = img.resize((nw, nh), resample=resample)
    left, top = (nw - size) // 2, (nh - size) // 2
    return img.crop((left, top, left + size, top + size))


def _open(path: Path) -> Image.Image:
    """Decode ``path``, after checking the size its header declares (a 48 KB PNG can claim 20000x20000)."""
    try:
        img = Image.open(path)  # reads the header only
        width, height = img.size
        if Image.MAX_IMAGE_PIXELS and width * height > Image.MAX_IMAGE_PIXELS:
            raise DataError(f"image {path} is too large to decode safely: its header declares {width}x{height} "
                            f"pixels, more than PIL.Image.MAX_IMAGE_PIXELS={Image.MAX_IMAGE_PIXELS}")
        img.load()
    except Image.DecompressionBombError as err:  # raised by Image.open itself above twice the limit
        raise DataError(f"image {path} is too large to decode safely: {err}") from None  # size in the message
    except (OSError, UnidentifiedImageError, ValueError) as err:
        if isinstance(err, DataError):
            raise
        raise DataError(f"cannot read image {path}: {err}") from None
    return img


class ImageFolderDataset(Dataset):
    """Images of ``root`` for ``split``, as float32 ``[3, S, S]`` in [0, 1] (S = image_size).

    With ``masks_dir``, each image ``name.ext`` needs ``masks_dir/name.png`` holding integer instance ids
    per pixel (0 = background); it is resized with nearest neighbour and returned as int64 ``[S, S]``.
    Items are dicts with ``image`` (and ``mask``), the same keys as ``SceneDataset``.
    """

    def __init__(
        self, root: str | Path, split: str, image_size: int, masks_dir: str | Path | None = None, seed: int = 0,
    ) -> None:
        root = Path(root)
        if not root.is_dir():
            raise ConfigError(f"image folder {root} does not exist or is not a directory")
        check_split(split)
        if not isinstance(image_size, int) or image_size < 1:
            raise ConfigError(f"image_size must be a positive integer, got {image_size!r}")
        files = [p for p in root.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES]
        if not files:
            raise ConfigError(f"image folder {root} has no {'/'.join(IMAGE_SUFFIXES)} files")
        self.root, self.split, self.image_size = root, split, image_size
        self.files = split_files(files, split, seed)
        self.mask_files: list[Path] | None = None
        if masks_dir is not None:
            masks_dir = Path(masks_dir)
            if not masks_dir.is_dir():
                raise ConfigError(f"mask folder {masks_dir} does not exist or is not a directory")
            self.mask_files = [masks_dir / f"{p.stem}.png" for p in self.files]
            missing = [m for m in self.mask_files if not m.is_file()]
            if missing:
                raise ConfigError(f"{len(missing)} image(s) have no mask, e.g. {missing[0]}")

    def __len__(self) -> int:
        return len(self.files)

    def __getitem__(self, index: int) -> dict[str, torch.Tensor]:
        path = self.files[index]
        raw = _open(path)
        img = _resize_center_crop(raw.convert("RGB"), self.image_size, Image.Resampling.BILINEAR)
        image = torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0).permute(2, 0, 1).contiguous()
        item = {"image": image}
        if self.mask_files is not None:
            mask_path = self.mask_files[index]
            ids = _open(mask_path)
            if ids.size != raw.size:
                raise DataError(f"mask {mask_path} is {ids.size[0]}x{ids.size[1]} pixels "
                                f"but image {path} is {raw.size[0]}x{raw.size[1]}")
            if ids.mode not in ("L", "P", "I", "I;16"):
                raise DataError(f"mask {mask_path} must be a single-channel PNG of instance ids, got mode {ids.mode}")
            if ids.mode == "I;16":
                ids = ids.convert("I")
            ids = _resize_center_crop(ids, self.image_size, Image.Resampling.NEAREST)
            item["mask"] = torch.from_numpy(np.asarray(ids).astype(np.int64))
        return item
