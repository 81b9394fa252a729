"""Pictures are real PNGs of the promised size, show the given pixels, and are written atomically."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from deqkit.plots import save_curves, save_histogram, save_slot_grid, slot_grid_layout

torch.set_num_threads(1)


def to_uint8(x: torch.Tensor) -> np.ndarray:
    """[3, H, W] in [0, 1] -> [H, W, 3] uint8, the grid's quantisation."""
    return np.rint(x.clamp(0, 1).permute(1, 2, 0).numpy() * 255).astype(np.uint8)


def read_png(path: Path) -> np.ndarray:
    with Image.open(path) as picture:
        assert picture.format == "PNG"
        return np.asarray(picture.convert("RGB"))


def tile(grid: np.ndarray, box: tuple[int, int, int, int]) -> np.ndarray:
    top, left, bottom, right = box
    return grid[top:bottom, left:right]


@pytest.fixture
def scene() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    b, k, h, w = 5, 3, 10, 12
    return {
        "images": torch.rand(b, 3, h, w, generator=g),
        "recons": torch.rand(b, 3, h, w, generator=g) * 1.4 - 0.2,  # out of range: must be clipped
        "masks": torch.randn(b, k, h, w, generator=g).softmax(dim=1),
        "rgb": torch.rand(b, k, 3, h, w, generator=g),
    }


def test_slot_grid_tiles_show_inputs_reconstructions_and_masks(tmp_path: Path, scene: dict[str, torch.Tensor]) -> None:
    path = save_slot_grid(tmp_path / "grid.png", scene["images"], scene["recons"], scene["masks"], scale=1)
    grid = read_png(path)
    layout = slot_grid_layout(10, 12, scale=1)
    rows, cols = 5, 2 + 3
    assert grid.shape[:2] == layout.size(rows, cols)
    for r in range(rows):
        np.testing.assert_array_equal(tile(grid, layout.box(r, 0)), to_uint8(scene["images"][r]))
        np.testing.assert_array_equal(tile(grid, layout.box(r, 1)), to_uint8(scene["recons"][r]))
        for k in range(3):
            grey = scene["masks"][r, k].expand(3, -1, -1)
            np.testing.assert_array_equal(tile(grid, layout.box(r, 2 + k)), to_uint8(grey))


def test_slot_grid_with_per_slot_rgb_shows_each_slot_over_white(tmp_path: Path, scene: dict[str, torch.Tensor]) -> None:
    masks = scene["masks"][:, :, None]  # [B, K, 1, H, W] is accepted too
    path = save_slot_grid(tmp_path / "grid.png", scene["images"], scene["recons"], masks, scene["rgb"], max_rows=2, scale=1)
    grid = read_png(path)
    layout = slot_grid_layout(10, 12, scale=1)
    assert grid.shape[:2] == layout.size(2, 5)  # max_rows keeps the first two samples
    for r in range(2):
        for k in range(3):
            m = scene["masks"][r, k]
            expected = scene["rgb"][r, k] * m + (1 - m)
            np.testing.assert_array_equal(tile(grid, layout.box(r, 2 + k)), to_uint8(expected))


def test_small_images_are_enlarged_by_an_integer_factor(tmp_path: Path, scene: dict[str, torch.Tensor]) -> None:
    path = save_slot_grid(tmp_path / "grid.png", scene["images"], scene["recons"], scene["masks"], max_rows=1)
    grid = read_png(path)
    layout = slot_grid_layout(10, 12)
    assert (layout.tile_h, layout.tile_w) == (60, 72)  # 12 * 6 >= 64 pixels on the longer side
    with Image.open(path) as picture:
        assert picture.size == layout.size(1, 5)[::-1]  # Pillow reports (width, height)
    upscaled = to_uint8(scene["images"][0]).repeat(6, axis=0).repeat(6, axis=1)
    np.testing.assert_array_equal(tile(grid, layout.box(0, 0)), upscaled)


def test_slot_grid_rejects_mismatched_shapes(tmp_path: Path, scene: dict[str, torch.Tensor]) -> None:
    images, recons, masks = scene["images"], scene["recons"], scene["masks"]
    with pytest.raises(ValueError, match="recons must have the images' shape"):
        save_slot_grid(tmp_path / "x.png", images, recons[:, :, :5], masks)
    with pytest.raises(ValueError, match="masks must be"):
        save_slot_grid(tmp_path / "x.png", images, recons, masks[:2])
    with pytest.raises(ValueError, match="per_slot_rgb must be"):
        save_slot_grid(tmp_path / "x.png", images, recons, masks, scene["rgb"][:, :2])
    assert list(tmp_path.iterdir()) == []


def test_failed_write_leaves_no_partial_file_and_keeps_the_old_one(
    tmp_path: Path, scene: dict[str, torch.Tensor], monkeypatch: pytest.MonkeyPatch
) -> None:
    target = tmp_path / "grid.png"
    save_slot_grid(target, scene["images"], scene["recons"], scene["masks"])
    before = target.read_bytes()

    def broken_save(self: Image.Image, fp: object, *args: object, **kwargs: object) -> None:
        fp.write(b"\x89PNG half a picture")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(OSError, match="disk full"):
        save_slot_grid(target, scene["images"], scene["recons"], scene["masks"], max_rows=1)
    with pytest.raises(OSError, match="disk full"):
        save_slot_grid(tmp_path / "new.png", scene["images"], scene["recons"], scene["masks"])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["grid.png"]
    assert target.read_bytes() == before


def test_curves_are_a_png_of_the_requested_size_showing_the_series(tmp_path: Path) -> None:
    steps = torch.arange(40)
    series = {
        "anderson": (steps, 0.5 ** steps.double()),
        "iteration": (np.arange(10), [1.0, 0.5, 0.0, 0.1, 0.05, 0.02, 0.01, 0.005, 0.002, 0.001]),  # 0 on a log axis
    }
    path = save_curves(tmp_path / "sub" / "residual.png", series, title="residual", xlabel="iteration", ylabel="r", logy=True)
    grid = read_png(path)
    assert grid.shape == (400, 640, 3)
    blue = np.array([0x1F, 0x77, 0xB4])  # matplotlib's first colour: the first series was drawn
    assert (np.abs(grid.astype(int) - blue).sum(axis=-1) < 30).sum() > 100
    small = save_curves(tmp_path / "small.png", series, title="t", xlabel="x", ylabel="y", size=(3.0, 2.0), dpi=50)
    assert read_png(small).shape == (100, 150, 3)


def test_curves_reject_bad_series_and_accept_none(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="'loss' has 3 xs but 2 ys"):
        save_curves(tmp_path / "c.png", {"loss": ([0, 1, 2], [1.0, 2.0])}, title="t", xlabel="x", ylabel="y")
    with pytest.raises(ValueError, match=r"must be an \(xs, ys\) pair"):
        save_curves(tmp_path / "c.png", {"loss": np.ones(3)}, title="t", xlabel="x", ylabel="y")  # type: ignore[dict-item]
    assert list(tmp_path.iterdir()) == []
    empty = save_curves(tmp_path / "empty.png", {}, title="t", xlabel="x", ylabel="y")
    assert read_png(empty).shape == (400, 640, 3)


def test_failed_figure_write_leaves_no_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from matplotlib.figure import Figure

    def broken_savefig(self: Figure, fp: object, **kwargs: object) -> None:
        fp.write(b"partial")  # type: ignore[attr-defined]
        raise RuntimeError("renderer crashed")

    monkeypatch.setattr(Figure, "savefig", broken_savefig)
    with pytest.raises(RuntimeError, match="renderer crashed"):
        save_histogram(tmp_path / "h.png", [1, 2, 3], title="t", xlabel="x")
    assert list(tmp_path.iterdir()) == []


def test_histogram_of_nfe_and_of_awkward_values(tmp_path: Path) -> None:
    nfe = torch.randint(3, 30, (100,), generator=torch.Generator().manual_seed(0))
    assert read_png(save_histogram(tmp_path / "nfe.png", nfe, title="NFE", xlabel="f evals")).shape == (400, 640, 3)
    awkward = torch.tensor([0.1, float("nan"), 2.5, float("inf"), 2.5], requires_grad=True)
    assert read_png(save_histogram(tmp_path / "a.png", awkward, title="t", xlabel="x", dpi=50)).shape == (200, 320, 3)
    assert read_png(save_histogram(tmp_path / "e.png", [], title="t", xlabel="x")).shape == (400, 640, 3)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png", "e.png", "nfe.png"]


def test_figures_can_be_written_from_several_threads(tmp_path: Path) -> None:
    errors: list[BaseException] = []

    def work(i: int) -> None:
        try:
            for j in range(3):
                save_curves(tmp_path / f"c{i}.png", {"s": ([0, 1], [i, j])}, title=f"{i}", xlabel="x", ylabel="y", dpi=30)
        except BaseException as error:  # pragma: no cover - reported below
            errors.append(error)

    threads = [threading.Thread(target=work, args=(i,)) for i in range(3)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert errors == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["c0.png", "c1.png", "c2.png"]
