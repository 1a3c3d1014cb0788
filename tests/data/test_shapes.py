"""Tests for the procedural RGB + LiDAR shapes scenes."""

from __future__ import annotations

import numpy as np
import pytest

from jointspace.data.builtin import shapes

N = 200


@pytest.fixture(scope="module")
def scenes() -> list[dict]:
    """200 scenes with their object masks."""
    return list(shapes.generate(N, 7, return_mask=True))


def _third(x: float, width: int) -> str:
    """Which horizontal third a column coordinate falls in."""
    return shapes.POSITIONS[min(int(3 * x / width), 2)]


def test_shapes_and_dtypes(scenes: list[dict]) -> None:
    s = scenes[0]
    assert {"image", "lidar", "caption", "label", "meta"} <= set(s)
    assert s["image"].shape == (48, 48, 3) and s["image"].dtype == np.uint8
    assert s["lidar"].shape == (32, 96) and s["lidar"].dtype == np.float32
    assert set(s["meta"]) >= {"shape", "colour", "size", "position", "seed"}
    for s in scenes:
        assert s["label"] == shapes.SHAPES.index(s["meta"]["shape"])
        assert 0.0 < s["lidar"].min() and s["lidar"].max() <= shapes.MAX_RANGE
        assert (s["lidar"] == shapes.MAX_RANGE).any()  # beams above the horizon miss
    custom = shapes.render_scene(np.random.default_rng(0), image_size=32, lidar_shape=(16, 64))
    assert custom["image"].shape == (32, 32, 3) and custom["lidar"].shape == (16, 64)


def test_determinism() -> None:
    a, b = list(shapes.generate(5, 3)), list(shapes.generate(5, 3))
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x["image"], y["image"])
        np.testing.assert_array_equal(x["lidar"], y["lidar"])
        assert x["caption"] == y["caption"] and x["meta"] == y["meta"]
    alone = shapes.render_one(3, 4)
    np.testing.assert_array_equal(alone["image"], a[4]["image"])
    np.testing.assert_array_equal(alone["lidar"], a[4]["lidar"])
    c = list(shapes.generate(5, 4))
    assert not np.array_equal(a[0]["image"], c[0]["image"])
    assert not np.array_equal(a[0]["lidar"], c[0]["lidar"])
    assert not np.array_equal(a[0]["image"], a[1]["image"])


def test_caption_names_meta(scenes: list[dict]) -> None:
    for s in scenes:
        m, cap = s["meta"], s["caption"]
        assert m["colour"] in cap and m["shape"] in cap and shapes.POSITION_WORDS[m["position"]] in cap
        assert sum(name in cap for name in shapes.SHAPES) == 1
    assert len({s["caption"] for s in scenes}) > 50


def test_all_classes_and_positions_appear(scenes: list[dict]) -> None:
    assert {s["meta"]["shape"] for s in scenes} == set(shapes.SHAPES)
    assert {s["meta"]["position"] for s in scenes} == set(shapes.POSITIONS)
    assert {s["meta"]["colour"] for s in scenes} == set(shapes.COLOURS)
    assert {s["meta"]["size"] for s in scenes} == set(shapes.SIZES)


def test_object_pixels_in_captioned_third(scenes: list[dict]) -> None:
    for i, s in enumerate(scenes):
        mask = s["mask"]
        assert mask.sum() >= 12, s["caption"]
        cols = np.nonzero(mask)[1]
        pos = s["meta"]["position"]
        assert _third(cols.mean() + 0.5, mask.shape[1]) == pos, s["caption"]
        assert np.mean([_third(c + 0.5, mask.shape[1]) == pos for c in cols]) > 0.6, s["caption"]
        if i < 20:  # the mask is where the object changes the image
            empty = shapes.render_scene(np.random.default_rng([7, i]), draw_object=False)["image"]
            diff = np.abs(s["image"].astype(int) - empty).sum(-1)
            assert diff[mask].mean() > 30


def test_size_changes_area(scenes: list[dict]) -> None:
    area = {
        size: np.mean([s["mask"].sum() for s in scenes if s["meta"]["size"] == size]) for size in shapes.SIZES
    }
    assert area["large"] > 1.8 * area["small"]


def test_lidar_hits_object(scenes: list[dict]) -> None:
    for i, s in enumerate(scenes[:40]):
        empty = shapes.render_scene(np.random.default_rng([7, i]), draw_object=False)["lidar"]
        diff = s["lidar"] - empty  # same noise draws: zero off the object, negative on it
        assert diff.max() <= 1e-5
        rows, cols = np.nonzero(diff < -0.3)
        assert len(cols) >= 8, s["caption"]
        # the object is nearer than the ground behind it at the same zenith
        assert s["lidar"][rows, cols].min() < empty[rows, cols].min() - 0.3
        assert _third(cols.mean() + 0.5, empty.shape[1]) == s["meta"]["position"], s["caption"]


def test_prompts() -> None:
    assert shapes.class_names() == list(shapes.SHAPES)
    assert all("{}" in t for t in shapes.prompt_templates())
    scenes = list(shapes.generate(60, 11))
    for name in shapes.class_names():
        prompts = shapes.zero_shot_prompts(name)
        assert len(prompts) == len(set(prompts)) > 50
        assert all(name in p and not any(o in p for o in shapes.SHAPES if o != name) for p in prompts)
        assert all(s["caption"] in prompts for s in scenes if s["meta"]["shape"] == name)
    with pytest.raises(ValueError):
        shapes.zero_shot_prompts("torus")


def test_point_cloud_is_the_range_image_in_3d():
    """Each scene's points are hits of its own range image: their distances are range values, and the
    cloud sizes differ (returns are dropped at random, as a sensor loses some)."""
    scenes = [shapes.render_one(3, i) for i in range(4)]
    for s in scenes:
        dist = np.linalg.norm(s["points"], axis=1)
        hits = s["lidar"][:, ::2][s["lidar"][:, ::2] < shapes.MAX_RANGE]
        assert s["points"].shape[1] == 3 and 0 < len(dist) <= len(hits)
        assert np.isin(np.round(dist, 3), np.round(hits, 3)).mean() > 0.99
    assert len({len(s["points"]) for s in scenes}) > 1
