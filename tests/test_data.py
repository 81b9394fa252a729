"""Claims about deqkit.data: procedural scenes are deterministic, their masks and images agree with their
object properties and paint order, configs reject bad values, and the image-folder loader splits and
reads real files."""

from __future__ import annotations

import colorsys
import dataclasses

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from matplotlib.path import Path as PolyPath
from PIL import Image
from torch.utils.data import DataLoader

from deqkit.data import (
    BACKGROUNDS,
    SHAPES,
    ImageFolderDataset,
    SceneConfig,
    SceneDataset,
    property_dim,
    property_layout,
    render_batch,
    render_item,
)
from deqkit.data.folder import DataError
from deqkit.data.scenes import hsv_to_rgb
from deqkit.errors import ConfigError
from deqkit.data.shapes import rasterize

torch.set_num_threads(1)

SMALL = SceneConfig(image_size=32, train_size=40, val_size=10, test_size=10)


def _coverage(item: dict, config: SceneConfig) -> np.ndarray:
    """Unoccluded coverage ``bool [n, H, W]`` of the item's present objects, from its properties."""
    n = int(item["num_objects"])
    names = [config.shapes[k] for k in item["shape"][:n].tolist()]
    return rasterize(names, item["x"][:n].double().numpy(), item["y"][:n].double().numpy(),
                     item["size"][:n].double().numpy(), config.image_size)


# ---------------------------------------------------------------- shapes against an independent oracle

def _polygon(name: str) -> np.ndarray | None:
    """Vertices (u, v) on the unit-circumradius scale, v down; None for the curved shapes."""
    h, t = 1 / np.sqrt(2), np.sqrt(3) / 2
    a, w = 0.95, 0.3
    return {
        "square": np.array([[-h, -h], [h, -h], [h, h], [-h, h]]),
        "triangle": np.array([[0, -1], [t, 0.5], [-t, 0.5]]),
        "diamond": np.array([[0, -1], [1, 0], [0, 1], [-1, 0]]),
        "cross": np.array([[-w, -a], [w, -a], [w, -w], [a, -w], [a, w], [w, w], [w, a], [-w, a],
                           [-w, w], [-a, w], [-a, -w], [-w, -w]]),
    }.get(name)


@pytest.mark.parametrize("name", SHAPES)
def test_rasterized_shapes_match_point_in_polygon_oracle(name):
    rng = np.random.default_rng(1)
    s = 48
    x, y, size = rng.uniform(0.3, 0.7, 3), rng.uniform(0.3, 0.7, 3), rng.uniform(0.1, 0.25, 3)
    got = rasterize([name] * 3, x, y, size, s)
    centres = (np.arange(s) + 0.5) / s
    px, py = np.meshgrid(centres, centres)  # px varies along columns, py along rows
    for i in range(3):
        u, v = (px - x[i]) / size[i], (py - y[i]) / size[i]
        poly = _polygon(name)
        if poly is not None:
            want = PolyPath(poly).contains_points(np.stack([u.ravel(), v.ravel()], 1)).reshape(s, s)
        elif name == "disc":
            want = np.hypot(u, v) <= 1
        else:  # ellipse, semi-axes 1 and 1/2
            want = np.hypot(u, 2 * v) <= 1
        assert got[i].sum() > 20
        np.testing.assert_array_equal(got[i], want)
        # Every shape stays inside its circumscribed circle.
        assert np.all(np.hypot(u, v)[got[i]] <= 1 + 1e-9)


def test_hsv_to_rgb_matches_colorsys():
    rng = np.random.default_rng(0)
    h, s, v = rng.uniform(size=(3, 200))
    want = np.array([colorsys.hsv_to_rgb(*t) for t in zip(h, s, v)])
    np.testing.assert_allclose(hsv_to_rgb(h, s, v), want, atol=1e-6)


# ---------------------------------------------------------------- determinism

def test_same_item_every_time_and_in_any_order():
    ds = SceneDataset(SMALL, "train")
    forward = [ds[i] for i in range(6)]
    backward = [ds[i] for i in reversed(range(6))][::-1]
    for a, b in zip(forward, backward):
        for key in a:
            assert torch.equal(a[key], b[key]), key
    fresh = SceneDataset(dataclasses.replace(SMALL), "train")[3]
    assert all(torch.equal(fresh[k], forward[3][k]) for k in fresh)


def test_items_differ_across_index_split_and_seed():
    a = render_item(SMALL, "train", 0)
    others = [
        render_item(SMALL, "train", 1),
        render_item(SMALL, "val", 0),
        render_item(SMALL, "test", 0),
        render_item(SceneConfig(image_size=32, seed=1), "train", 0),
    ]
    for b in others:
        assert not torch.equal(a["image"], b["image"])


def test_cache_matches_rendering_on_demand():
    cfg = SceneConfig(image_size=32, val_size=8)
    cached, lazy = SceneDataset(cfg, "val", cache=True), SceneDataset(cfg, "val")
    for i in (0, 5, -1):
        a, b = cached[i], lazy[i]
        assert all(torch.equal(a[k], b[k]) for k in a)


def test_index_bounds():
    ds = SceneDataset(SMALL, "val")
    assert len(ds) == 10
    assert torch.equal(ds[-1]["image"], ds[9]["image"])
    with pytest.raises(IndexError, match="out of range"):
        ds[10]


# ---------------------------------------------------------------- masks, images and properties agree

def _check_scene_invariants(item: dict, cfg: SceneConfig) -> None:
    s, m = cfg.image_size, cfg.max_objects
    n = int(item["num_objects"])
    assert cfg.min_objects <= n <= cfg.max_objects
    present = item["present"]
    assert present.tolist() == [True] * n + [False] * (m - n)
    mask = item["mask"].numpy()
    image = item["image"].numpy()
    assert mask.min() >= 0 and mask.max() <= n
    cover = _coverage(item, cfg)
    depth = item["depth"][:n].numpy()
    assert sorted(depth.tolist()) == list(range(n))
    for k in range(n):
        visible = mask == k + 1
        # Every object is visible enough, and only where its shape is.
        assert visible.sum() >= cfg.min_visible_pixels
        assert visible.sum() >= cfg.min_visible_fraction * cover[k].sum()
        assert np.all(cover[k][visible])
        # Its pixels carry exactly its colour.
        np.testing.assert_array_equal(image[:, visible], np.repeat(item["color"][k].numpy()[:, None], visible.sum(), 1))
    # Occlusion law: a covered pixel shows the covering object with the largest depth (painted last).
    covered = cover.any(0)
    front = np.argmax(np.where(cover, depth[:, None, None], -1), axis=0) + 1
    np.testing.assert_array_equal(mask, np.where(covered, front, 0))
    assert 0.0 <= image.min() and image.max() <= 1.0
    x, y, size = item["x"][:n], item["y"][:n], item["size"][:n]
    assert torch.all((x - size >= 0) & (x + size <= 1) & (y - size >= 0) & (y + size <= 1))
    lo, hi = cfg.size_range
    assert torch.all((size >= lo - 1e-6) & (size <= hi + 1e-6))


def test_masks_images_and_occlusion_agree_with_properties():
    cfg = SceneConfig(image_size=48)
    for i in range(25):
        _check_scene_invariants(render_item(cfg, "train", i), cfg)


@settings(max_examples=25, deadline=None, database=None)
@given(
    image_size=st.integers(24, 80),
    counts=st.tuples(st.integers(1, 6), st.integers(0, 3)),
    background=st.sampled_from(BACKGROUNDS),
    colors=st.sampled_from(["palette", "hsv"]),
    shapes=st.lists(st.sampled_from(SHAPES), min_size=1, max_size=6, unique=True),
    seed=st.integers(0, 2**31),
    index=st.integers(0, 10**6),
)
def test_invariants_hold_for_random_configs(image_size, counts, background, colors, shapes, seed, index):
    cfg = SceneConfig(image_size=image_size, min_objects=counts[0], max_objects=min(counts[0] + counts[1], 6),
                      background=background, colors=colors, shapes=tuple(shapes), seed=seed)
    _check_scene_invariants(render_item(cfg, "test", index), cfg)


def test_overlapping_pair_front_object_hides_back_one():
    """Find a scene with an overlapping pair and check the overlap shows the later-painted object."""
    cfg = SceneConfig(image_size=64, min_objects=2, max_objects=2, size_range=(0.2, 0.3))
    for i in range(50):
        item = render_item(cfg, "train", i)
        cover = _coverage(item, cfg)
        overlap = cover[0] & cover[1]
        if overlap.sum() >= 10:
            front = int(torch.argmax(item["depth"][:2])) + 1
            assert np.all(item["mask"].numpy()[overlap] == front)
            back = 3 - front
            assert (item["mask"].numpy() == back).sum() < cover[back - 1].sum()  # partly hidden
            return
    pytest.fail("no overlapping pair in 50 scenes")


def test_plain_background_pixels_have_background_color():
    cfg = SceneConfig(image_size=32, background_color=(0.2, 0.4, 0.6))
    item = render_item(cfg, "train", 7)
    bg = item["mask"] == 0
    assert bg.any()
    torch.testing.assert_close(item["image"][:, bg], torch.tensor([0.2, 0.4, 0.6])[:, None].expand(3, int(bg.sum())))


def test_shapes_dtypes_and_padding():
    cfg = SceneConfig(image_size=40, min_objects=2, max_objects=5)
    item = render_item(cfg, "val", 3)
    n, d = int(item["num_objects"]), property_dim(cfg)
    expected = {
        "image": ((3, 40, 40), torch.float32), "mask": ((40, 40), torch.int64),
        "shape": ((5,), torch.int64), "color": ((5, 3), torch.float32), "size": ((5,), torch.float32),
        "x": ((5,), torch.float32), "y": ((5,), torch.float32), "depth": ((5,), torch.int64),
        "present": ((5,), torch.bool), "num_objects": ((), torch.int64), "properties": ((5, d), torch.float32),
    }
    assert set(item) == set(expected)
    for key, (shape, dtype) in expected.items():
        assert tuple(item[key].shape) == shape and item[key].dtype == dtype, key
    assert torch.all(item["shape"][n:] == -1) and torch.all(item["depth"][n:] == -1)
    assert torch.all(item["color"][n:] == 0)


def test_property_vector_layout():
    cfg = SceneConfig(image_size=32, shapes=("disc", "square", "cross"))
    lay, item = property_layout(cfg), render_item(cfg, "train", 2)
    p, n = item["properties"], int(item["num_objects"])
    assert p.shape[-1] == property_dim(cfg) == 3 + 7
    assert torch.equal(p[:n, lay["shape"]].argmax(-1), item["shape"][:n])
    assert torch.all(p[:n, lay["shape"]].sum(-1) == 1)
    assert torch.equal(p[:n, lay["color"]], item["color"][:n])
    assert torch.equal(p[:n, lay["size"]][:, 0], item["size"][:n])
    assert torch.equal(p[:n, lay["position"]], torch.stack([item["x"], item["y"]], -1)[:n])
    assert torch.equal(p[:, lay["present"]][:, 0].bool(), item["present"])
    assert torch.all(p[n:] == 0)


def test_palette_colors_come_from_palette():
    from deqkit.data import PALETTE

    item = render_item(SMALL, "train", 11)
    n = int(item["num_objects"])
    for c in item["color"][:n].numpy():
        assert np.any(np.all(PALETTE == c, axis=1))


def test_dataloader_collates_batches():
    ds = SceneDataset(SMALL, "train")
    batch = next(iter(DataLoader(ds, batch_size=4, shuffle=False, num_workers=0)))
    assert batch["image"].shape == (4, 3, 32, 32) and batch["mask"].shape == (4, 32, 32)
    assert batch["properties"].shape == (4, SMALL.max_objects, property_dim(SMALL))
    direct = render_batch(SMALL, "train", range(4))
    assert all(torch.equal(batch[k], direct[k]) for k in batch)


# ---------------------------------------------------------------- config validation

@pytest.mark.parametrize(
    "kwargs, field",
    [
        ({"image_size": 4}, "image_size"),
        ({"image_size": 32.0}, "image_size"),
        ({"min_objects": 0}, "min_objects"),
        ({"min_objects": 5, "max_objects": 3}, "min_objects"),
        ({"shapes": ("disc", "hexagon")}, "shapes"),
        ({"shapes": ()}, "shapes"),
        ({"shapes": ("disc", "disc")}, "shapes"),
        ({"colors": "rainbow"}, "colors"),
        ({"background": "noise"}, "background"),
        ({"background_color": (0, 0, 2)}, "background_color"),
        ({"size_range": (0.3, 0.1)}, "size_range"),
        ({"size_range": (0.0, 0.1)}, "size_range"),
        ({"min_visible_fraction": 1.5}, "min_visible_fraction"),
        ({"seed": -1}, "seed"),
        ({"train_size": -5}, "train_size"),
    ],
)
def test_invalid_config_values_name_the_field(kwargs, field):
    with pytest.raises(ConfigError, match=f"SceneConfig.{field}"):
        SceneConfig(**kwargs)


def test_invalid_choice_lists_valid_choices():
    with pytest.raises(ConfigError, match="valid choices are .*plain"):
        SceneConfig(background="noise")


def test_scene_config_nests_in_an_application_config():
    """The trainer's generic loader builds SceneConfig from --set strings and rejects unknown keys."""
    from dataclasses import dataclass, field

    from deqkit.train.config import from_dict, resolve_config, to_dict

    @dataclass
    class App:
        data: SceneConfig = field(default_factory=SceneConfig)

    cfg = resolve_config(App, sets=["data.image_size=32", "data.shapes=disc,cross", "data.size_range=0.1,0.15"])
    assert cfg.data == SceneConfig(image_size=32, shapes=("disc", "cross"), size_range=(0.1, 0.15))
    assert from_dict(App, to_dict(cfg)) == cfg
    with pytest.raises(ConfigError, match="unknown config key 'data.img_size'"):
        resolve_config(App, sets=["data.img_size=32"])
    with pytest.raises(ConfigError, match="SceneConfig.shapes: unknown shape 'hexagon'"):
        resolve_config(App, sets=["data.shapes=disc,hexagon"])


def test_invalid_split_and_impossible_scene():
    with pytest.raises(ConfigError, match="split must be one of"):
        SceneDataset(SMALL, "training")
    crowded = SceneConfig(image_size=32, min_objects=6, size_range=(0.5, 0.5))
    with pytest.raises(ConfigError, match="could not place"):
        render_item(crowded, "train", 0)


# ---------------------------------------------------------------- image folders

def _write_folder(tmp_path, n=20, with_masks=True):
    images, masks = tmp_path / "images", tmp_path / "masks"
    images.mkdir()
    masks.mkdir()
    for i in range(n):
        colour = (10 * i, 255 - 10 * i, 100)
        # 40x30 (wider than tall): the centre crop keeps the middle 30 columns.
        Image.new("RGB", (40, 30), colour).save(images / f"img{i:03d}.{'png' if i % 2 else 'jpg'}")
        if with_masks:
            ids = np.zeros((30, 40), dtype=np.uint8)
            ids[:, 20:] = 1 + i % 3  # right half is object 1..3
            Image.fromarray(ids, mode="L").save(masks / f"img{i:03d}.png")
    return images, masks


def test_folder_split_sizes_disjoint_and_deterministic(tmp_path):
    images, _ = _write_folder(tmp_path, with_masks=False)
    splits = {s: ImageFolderDataset(images, s, image_size=16) for s in ("train", "val", "test")}
    assert [len(splits[s]) for s in ("train", "val", "test")] == [14, 3, 3]
    names = [{p.name for p in splits[s].files} for s in ("train", "val", "test")]
    assert not (names[0] & names[1]) and not (names[0] & names[2]) and not (names[1] & names[2])
    assert set.union(*names) == {p.name for p in images.iterdir()}
    again = ImageFolderDataset(images, "val", image_size=16)
    assert again.files == splits["val"].files
    other_seed = ImageFolderDataset(images, "train", image_size=16, seed=1)
    assert set(other_seed.files) != set(splits["train"].files)


def test_folder_reads_images_and_masks(tmp_path):
    images, masks = _write_folder(tmp_path)
    ds = ImageFolderDataset(images, "train", image_size=16, masks_dir=masks)
    item = ds[0]
    assert item["image"].shape == (3, 16, 16) and item["image"].dtype == torch.float32
    assert item["mask"].shape == (16, 16) and item["mask"].dtype == torch.int64
    i = int(ds.files[0].stem[3:])
    colour = torch.tensor([10 * i, 255 - 10 * i, 100]) / 255.0
    # JPEG is lossy: a flat colour survives within a few levels.
    assert torch.allclose(item["image"], colour[:, None, None].expand(3, 16, 16), atol=4 / 255)
    assert torch.all(item["mask"][:, :8] == 0) and torch.all(item["mask"][:, 8:] == 1 + i % 3)
    batch = next(iter(DataLoader(ds, batch_size=5, num_workers=0)))
    assert batch["image"].shape == (5, 3, 16, 16) and batch["mask"].shape == (5, 16, 16)


def test_folder_errors_are_clear(tmp_path):
    with pytest.raises(ConfigError, match="does not exist"):
        ImageFolderDataset(tmp_path / "nope", "train", 16)
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(ConfigError, match="has no"):
        ImageFolderDataset(empty, "train", 16)
    images, masks = _write_folder(tmp_path, n=4)
    (masks / "img002.png").unlink()
    with pytest.raises(ConfigError, match="have no mask"):
        ImageFolderDataset(images, "train", 16, masks_dir=masks)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / "broken.png").write_bytes(b"not an image at all")
    ds = ImageFolderDataset(bad, "train", 16)
    with pytest.raises(DataError, match="cannot read image .*broken.png"):
        ds[0]
    with pytest.raises(ConfigError, match="split must be one of"):
        ImageFolderDataset(images, "dev", 16)


def test_speed_benchmark_script_writes_json(tmp_path, monkeypatch, capsys):
    import json
    import runpy
    import sys
    from pathlib import Path

    script = Path(__file__).parents[1] / "benchmarks" / "data_speed.py"
    out = tmp_path / "speed.json"
    monkeypatch.setattr(sys, "argv", [str(script), "--sizes", "32", "--items", "8", "--batch-size", "4",
                                      "--repeats", "1", "--json", str(out)])
    runpy.run_path(str(script), run_name="__main__")
    rows = json.loads(out.read_text())["results"]
    assert rows[0]["image_size"] == 32 and rows[0]["items_per_s"] > 0
    assert "items/s" in capsys.readouterr().out


def test_worker_processes_give_the_same_items():
    ds = SceneDataset(SceneConfig(image_size=32, train_size=8, background="gradient", colors="hsv"), "train")
    loader = DataLoader(ds, batch_size=4, num_workers=2, shuffle=False)
    batches = list(loader)
    direct = render_batch(ds.config, "train", range(8))
    for k in direct:
        assert torch.equal(torch.cat([b[k] for b in batches]), direct[k]), k


def test_size_values_make_size_discrete_and_leave_the_default_stream_alone():
    from deqkit.data import SceneDataset

    base = SceneConfig(image_size=32, min_objects=3, max_objects=4, train_size=20)
    discrete = SceneConfig(image_size=32, min_objects=3, max_objects=4, train_size=20, size_values=(0.1, 0.2))
    sizes = torch.cat([SceneDataset(discrete, "train")[i]["size"][:3] for i in range(20)])
    assert {round(v, 5) for v in sizes.tolist()} == {0.1, 0.2}
    continuous = torch.cat([SceneDataset(base, "train")[i]["size"][:3] for i in range(20)])
    assert len(set(continuous.tolist())) == 60  # uniform draws: all different
    with pytest.raises(ValueError, match="size_values"):
        SceneConfig(size_values=(0.0, 0.2))
