"""Pictures of predicted sets: objects drawn over the image, and 2-D point sets."""

from __future__ import annotations

from pathlib import Path
from typing import Sequence

import numpy as np
import torch
from PIL import Image, ImageDraw

from deqkit.data.scenes import PALETTE


def save_object_overlay(path: Path, images: torch.Tensor, shapes: Sequence[str], size_values: Sequence[float] | None,
                        units: float, confidence: torch.Tensor, classes: torch.Tensor, xy: torch.Tensor,
                        true_classes: torch.Tensor, true_xy: torch.Tensor, present: torch.Tensor,
                        scale: int = 8, limit: int = 8) -> None:
    """A row of images (at most ``limit``), each enlarged ``scale`` times: true objects as white circles
    (their size class's radius), predictions with confidence > 0.5 as a cross and a circle in the
    predicted palette colour, labelled with the predicted shape's initial and the confidence.
    Coordinates ``xy`` are in scene units (``units`` per image side)."""
    n, (_, h, w) = min(limit, images.shape[0]), images.shape[1:]
    side = w * scale
    canvas = Image.new("RGB", (n * (side + 4), h * scale), (255, 255, 255))
    for b in range(n):
        img = (images[b].clamp(0, 1).permute(1, 2, 0).cpu().numpy() * 255).astype(np.uint8)
        tile = Image.fromarray(img).resize((side, h * scale), Image.NEAREST)
        draw = ImageDraw.Draw(tile)

        def radius(size_class: int) -> float:
            return (size_values[size_class] if size_values else 0.1) * side

        for k in range(true_xy.shape[1]):
            if not present[b, k]:
                continue
            x, y = (true_xy[b, k] / units * side).tolist()
            r = radius(int(true_classes[b, k, 2]))
            draw.ellipse([x - r, y - r, x + r, y + r], outline=(255, 255, 255), width=2)
        for k in range(xy.shape[1]):
            if confidence[b, k] <= 0.5:
                continue
            x, y = (xy[b, k] / units * side).tolist()
            shape, colour, size = (int(v) for v in classes[b, k])
            rgb = tuple(int(255 * c) for c in PALETTE[colour])
            r = radius(size)
            draw.ellipse([x - r, y - r, x + r, y + r], outline=rgb, width=1)
            draw.line([x - 5, y, x + 5, y], fill=rgb, width=2)
            draw.line([x, y - 5, x, y + 5], fill=rgb, width=2)
            draw.text((x + 4, y + 2), f"{shapes[shape][0]} {float(confidence[b, k]):.2f}", fill=(255, 255, 255))
        canvas.paste(tile, (b * (side + 4), 0))
    path.parent.mkdir(parents=True, exist_ok=True)
    canvas.save(path)


def save_point_sets(path: Path, target: torch.Tensor, prediction: torch.Tensor, limit: int = 8) -> None:
    """True sets (circles) and predicted sets (crosses), first two dimensions, one panel per sample."""
    from matplotlib.figure import Figure

    n = min(limit, target.shape[0])
    fig = Figure(figsize=(2.2 * n, 2.4), dpi=100)
    for b in range(n):
        ax = fig.add_subplot(1, n, b + 1)
        t, p = target[b].cpu().numpy(), prediction[b].detach().cpu().numpy()
        ax.scatter(t[:, 0], t[:, 1], marker="o", s=30, facecolors="none", edgecolors="tab:blue", label="true")
        ax.scatter(p[:, 0], p[:, 1], marker="x", s=30, color="tab:red", label="predicted")
        ax.set_xlim(-3, 3), ax.set_ylim(-3, 3), ax.set_aspect("equal"), ax.set_xticks([]), ax.set_yticks([])
    fig.axes[0].legend(loc="lower left", fontsize=6)
    fig.tight_layout()
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path)
