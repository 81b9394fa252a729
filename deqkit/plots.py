"""PNG pictures for training runs and applications: slot decompositions, curves, histograms.

Pure helpers: they read tensors or numbers, write one PNG and return its path; they never touch a model.
Every file is written atomically (a temporary file in the same folder, then ``os.replace``), so a reader
never sees a half-written picture and a failed write leaves the previous file, if any, in place.
Slot grids use Pillow only; curves and histograms use matplotlib's object API (``Figure`` without
``pyplot``), which keeps no global state and is safe to call from any thread without a display.
"""

from __future__ import annotations

import contextlib
import math
import os
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

import numpy as np
import torch
from PIL import Image, ImageDraw, ImageFont

ArrayLike = torch.Tensor | np.ndarray | Sequence[float]

_BACKGROUND = (90, 90, 90)  # dark frame, so white and black tiles both show their edges
_TEXT = (255, 255, 255)


@dataclass(frozen=True)
class GridLayout:
    """Where each tile of a slot grid sits: tiles of ``tile_h x tile_w`` pixels, ``pad`` pixels apart
    and around the border, below a ``header`` pixels tall strip of column titles."""

    tile_h: int
    tile_w: int
    pad: int
    header: int

    def box(self, row: int, col: int) -> tuple[int, int, int, int]:
        """``(top, left, bottom, right)`` pixel bounds of a tile (bottom/right exclusive)."""
        top = self.header + self.pad + row * (self.tile_h + self.pad)
        left = self.pad + col * (self.tile_w + self.pad)
        return top, left, top + self.tile_h, left + self.tile_w

    def size(self, rows: int, cols: int) -> tuple[int, int]:
        """``(height, width)`` of a grid with ``rows x cols`` tiles."""
        return self.box(rows, cols)[:2]


def slot_grid_layout(height: int, width: int, *, pad: int = 2, scale: int | None = None) -> GridLayout:
    """Layout of :func:`slot_grid` for ``height x width`` images; ``scale=None`` enlarges small images
    (by an integer factor, nearest neighbour) until tiles are at least 64 pixels on their longer side."""
    if scale is None:
        scale = max(1, math.ceil(64 / max(height, width)))
    if scale < 1 or pad < 0:
        raise ValueError(f"slot grid needs scale >= 1 and pad >= 0, got scale={scale}, pad={pad}")
    return GridLayout(tile_h=height * scale, tile_w=width * scale, pad=pad, header=14)


def slot_grid(
    images: torch.Tensor,
    recons: torch.Tensor,
    masks: torch.Tensor,
    per_slot_rgb: torch.Tensor | None = None,
    *,
    max_rows: int = 8,
    pad: int = 2,
    scale: int | None = None,
    extra: Sequence[tuple[str, torch.Tensor]] = (),
    recon_title: str = "recon",
) -> np.ndarray:
    """One row per sample: input | reconstruction | each slot's mask, as an RGB ``uint8`` array.

    A slot's tile is its mask in grey, or with ``per_slot_rgb`` its own decoded image where the mask is
    on and white where it is off (``rgb * mask + (1 - mask)``, as in the slot attention paper's figures).
    Values are clipped to ``[0, 1]`` (NaN shows as 0) and rounded to 8 bits. Tile positions are given by
    :func:`slot_grid_layout`; the header names the columns.

    Args:
        images: ``[B, 3, H, W]`` inputs in ``[0, 1]``.
        recons: ``[B, 3, H, W]`` reconstructions.
        masks: ``[B, K, H, W]`` (or ``[B, K, 1, H, W]``) soft masks, summing to 1 over ``K``.
        per_slot_rgb: optional ``[B, K, 3, H, W]`` per-slot decoded images.
        max_rows: show at most this many samples (the first ones).
        extra: more ``(title, [B, 3, H, W])`` image columns, shown after the reconstruction.
        recon_title: the reconstruction column's title.

    Returns:
        ``uint8`` array ``[height, width, 3]`` with ``height, width = layout.size(rows, 2 + K)``.
    """
    if masks.ndim == 5 and masks.shape[2] == 1:
        masks = masks[:, :, 0]
    if images.ndim != 4 or images.shape[1] != 3:
        raise ValueError(f"images must be [B, 3, H, W], got {tuple(images.shape)}")
    batch, _, height, width = images.shape
    if recons.shape != images.shape:
        raise ValueError(f"recons must have the images' shape {tuple(images.shape)}, got {tuple(recons.shape)}")
    if masks.ndim != 4 or masks.shape[0] != batch or masks.shape[2:] != images.shape[2:]:
        raise ValueError(f"masks must be [B, K, H, W] = [{batch}, K, {height}, {width}], got {tuple(masks.shape)}")
    slots = masks.shape[1]
    if per_slot_rgb is not None and per_slot_rgb.shape != (batch, slots, 3, height, width):
        raise ValueError(
            f"per_slot_rgb must be [B, K, 3, H, W] = {(batch, slots, 3, height, width)}, got {tuple(per_slot_rgb.shape)}"
        )
    if max_rows < 1:
        raise ValueError(f"max_rows must be >= 1, got {max_rows}")

    rows = min(batch, max_rows)
    for title, column in extra:
        if column.shape != images.shape:
            raise ValueError(f"extra column {title!r} must have the images' shape {tuple(images.shape)}, "
                             f"got {tuple(column.shape)}")
    images, recons, masks = (_to_unit_numpy(x[:rows]) for x in (images, recons, masks))
    more = [_to_unit_numpy(column[:rows])[:, None] for _, column in extra]
    if per_slot_rgb is None:
        slot_tiles = np.repeat(masks[:, :, None], 3, axis=2)  # [R, K, 3, H, W] grey
    else:
        rgb = _to_unit_numpy(per_slot_rgb[:rows])
        slot_tiles = rgb * masks[:, :, None] + (1.0 - masks[:, :, None])
    columns = np.concatenate([images[:, None], recons[:, None], *more, slot_tiles], axis=1)  # [R, 2 + K, 3, H, W]
    tiles = np.rint(columns * 255.0).astype(np.uint8).transpose(0, 1, 3, 4, 2)  # [R, C, H, W, 3]

    layout = slot_grid_layout(height, width, pad=pad, scale=scale)
    factor = layout.tile_h // height
    if factor > 1:
        tiles = tiles.repeat(factor, axis=2).repeat(factor, axis=3)
    grid = np.empty((*layout.size(rows, columns.shape[1]), 3), dtype=np.uint8)
    grid[...] = _BACKGROUND
    for r in range(rows):
        for c in range(columns.shape[1]):
            top, left, bottom, right = layout.box(r, c)
            grid[top:bottom, left:right] = tiles[r, c]
    titles = ["input", recon_title] + [title for title, _ in extra] + [f"slot {k + 1}" for k in range(slots)]
    return _draw_header(grid, layout, titles)


def save_slot_grid(
    path: str | os.PathLike[str],
    images: torch.Tensor,
    recons: torch.Tensor,
    masks: torch.Tensor,
    per_slot_rgb: torch.Tensor | None = None,
    max_rows: int = 8,
    *,
    pad: int = 2,
    scale: int | None = None,
    extra: Sequence[tuple[str, torch.Tensor]] = (),
    recon_title: str = "recon",
) -> Path:
    """Write :func:`slot_grid` as a PNG at ``path`` (parent folders are created); returns the path."""
    grid = slot_grid(images, recons, masks, per_slot_rgb, max_rows=max_rows, pad=pad, scale=scale, extra=extra,
                     recon_title=recon_title)
    picture = Image.fromarray(grid)
    return _write_atomically(path, lambda f: picture.save(f, format="PNG"))


def save_curves(
    path: str | os.PathLike[str],
    series: Mapping[str, tuple[ArrayLike, ArrayLike]],
    *,
    title: str,
    xlabel: str,
    ylabel: str,
    logy: bool = False,
    size: tuple[float, float] = (6.4, 4.0),
    dpi: int = 100,
) -> Path:
    """Line plot of named ``(xs, ys)`` series (residual traces, spectral norm or loss over training).

    The PNG is ``round(size[0] * dpi) x round(size[1] * dpi)`` pixels. With ``logy`` non-positive values
    are left out of the plot. Short series (at most 30 points) get markers so single points show.
    """
    figure, axes = _figure(size, dpi)
    for name, pair in series.items():
        if not (isinstance(pair, (tuple, list)) and len(pair) == 2):
            raise ValueError(f"series {name!r} must be an (xs, ys) pair, got {type(pair).__name__}")
        xs, ys = _to_1d(pair[0]), _to_1d(pair[1])
        if xs.shape != ys.shape:
            raise ValueError(f"series {name!r} has {xs.size} xs but {ys.size} ys")
        if logy:
            ys = np.where(ys > 0, ys, np.nan)
        axes.plot(xs, ys, label=name, marker="o" if xs.size <= 30 else None, markersize=3)
    if logy:
        axes.set_yscale("log")
    if series:
        axes.legend(loc="best", fontsize="small")
    else:
        _no_data(axes)
    axes.set(title=title, xlabel=xlabel, ylabel=ylabel)
    axes.grid(True, which="major", alpha=0.3)
    return _save_figure(path, figure, dpi)


def save_histogram(
    path: str | os.PathLike[str],
    values: ArrayLike,
    *,
    title: str,
    xlabel: str,
    size: tuple[float, float] = (6.4, 4.0),
    dpi: int = 100,
) -> Path:
    """Histogram of ``values`` (e.g. NFE per sample), with count, mean, median and max in a corner.

    Integer-valued data get one bar per integer (up to 200 distinct bins); other data get automatic
    bins. Non-finite values are left out and counted in the summary.
    """
    figure, axes = _figure(size, dpi)
    data = _to_1d(values)
    finite = data[np.isfinite(data)]
    if finite.size == 0:
        _no_data(axes)
    else:
        low, high = finite.min(), finite.max()
        integral = bool(np.all(finite == np.round(finite))) and high - low <= 200
        bins = np.arange(low - 0.5, high + 1.5) if integral else "auto"
        counts, _, _ = axes.hist(finite, bins=bins, color="tab:blue", edgecolor="white")
        axes.set_ylim(0, counts.max() * 1.15)  # headroom so the summary never covers a bar
        if integral:
            from matplotlib.ticker import MaxNLocator

            axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        summary = f"n={finite.size}  mean={finite.mean():.4g}  median={np.median(finite):.4g}  max={high:.4g}"
        if finite.size < data.size:
            summary += f"  non-finite={data.size - finite.size}"
        axes.text(0.98, 0.97, summary, transform=axes.transAxes, ha="right", va="top", fontsize="small")
    axes.set(title=title, xlabel=xlabel, ylabel="count")
    axes.grid(True, axis="y", alpha=0.3)
    return _save_figure(path, figure, dpi)


def _to_unit_numpy(x: torch.Tensor) -> np.ndarray:
    """Tensor -> float32 numpy in [0, 1] (NaN -> 0)."""
    array = x.detach().to("cpu", torch.float32).numpy()
    return np.clip(np.nan_to_num(array, nan=0.0), 0.0, 1.0)


def _to_1d(x: Any) -> np.ndarray:
    if isinstance(x, torch.Tensor):
        x = x.detach().to("cpu", torch.float64).numpy()
    return np.asarray(x, dtype=np.float64).reshape(-1)


def _draw_header(grid: np.ndarray, layout: GridLayout, titles: list[str]) -> np.ndarray:
    picture = Image.fromarray(grid)
    draw = ImageDraw.Draw(picture)
    font = ImageFont.load_default(size=11)
    for c, text in enumerate(titles):
        _, left, _, right = layout.box(0, c)
        width = draw.textlength(text, font=font)
        if width <= right - left:  # a title wider than its tile would spill over its neighbour
            draw.text((left + (right - left - width) / 2, 1), text, fill=_TEXT, font=font)
    return np.asarray(picture)


def _figure(size: tuple[float, float], dpi: int) -> tuple[Any, Any]:
    from matplotlib.figure import Figure  # no pyplot: no global figure registry, no GUI backend

    figure = Figure(figsize=size, dpi=dpi, layout="constrained")
    return figure, figure.add_subplot()


def _no_data(axes: Any) -> None:
    axes.text(0.5, 0.5, "no data", transform=axes.transAxes, ha="center", va="center", color="grey")


def _save_figure(path: str | os.PathLike[str], figure: Any, dpi: int) -> Path:
    return _write_atomically(path, lambda f: figure.savefig(f, format="png", dpi=dpi))


def _write_atomically(path: str | os.PathLike[str], write: Callable[[IO[bytes]], None]) -> Path:
    """Write through a temporary file in the target's folder, then rename it over the target."""
    target = Path(path)
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, temporary = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as stream:
            write(stream)
        os.chmod(temporary, 0o644)  # mkstemp creates 0600; pictures are meant to be shared
        os.replace(temporary, target)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(temporary)
        raise
    return target
