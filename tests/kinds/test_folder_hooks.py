"""The kinds' folder hooks: a modality subfolder's kind by its name's words and its files' extensions,
caption files read as text, and range images turned into 3-D points with their angle grid."""

import numpy as np
import pytest

from jointspace.data.builtin import shapes
from jointspace.errors import UsageError
from jointspace.kinds import get_kind, recognise_folder


@pytest.mark.parametrize(("folder", "exts", "kind"), [
    ("rgb", {"png"}, "image"), ("camera", {"jpg", "png"}, "image"), ("images", {"webp"}, "image"),
    ("lidar", {"npy"}, "range"), ("depth_maps", {"npy"}, "range"), ("range", {"npy"}, "range"),
    ("points", {"npy"}, "points"), ("point_clouds", {"npy"}, "points"),
    ("audio", {"npy"}, "sequence"), ("speech", {"npy"}, "sequence"), ("whatever", {"npy"}, "sequence"),
    ("text", {"txt"}, "text"), ("captions", {"txt"}, "text"), ("video", {"npz"}, "video"),
    ("notes", {"md"}, None), ("rgb", {"png", "md"}, None),
])
def test_each_kind_recognises_its_folders(folder, exts, kind):
    assert recognise_folder(folder, exts) == kind


def test_caption_files_are_read_as_their_text(tmp_path):
    (tmp_path / "a.txt").write_text("  a red square\n")
    (tmp_path / "a.png").write_bytes(b"")
    assert get_kind("text").folder_value(tmp_path / "a.txt", tmp_path) == "a red square"
    assert get_kind("image").folder_value(tmp_path / "a.png", tmp_path) == "a.png"


def test_range_to_points_by_hand():
    """A 2 x 3 grid: rows are zenith (elevation) 0 and 30 degrees, columns azimuth -90, 0, 90 degrees."""
    kind = get_kind("range")
    ranges = np.array([[1.0, 2.0, 4.0], [2.0, 0.0, 50.0]], dtype=np.float32)
    grid = kind.read_grid({"azimuth": np.array([-90.0, 0.0, 90.0]), "zenith": np.array([0.0, 30.0])},
                          [ranges, ranges], "test")  # degrees (beyond 2 pi), read as such
    assert grid["degrees"] and grid["no_return"] == 50.0
    s3 = np.sqrt(3)
    want = [[-1, 0, 0], [0, 0, 2], [4, 0, 0],  # x right, y up, z forward
            [-s3, 1, 0]]  # r 2 at 30 degrees up, 90 degrees left; r 0 and the no-return 50 are no hits
    np.testing.assert_allclose(kind.to_points(ranges, grid), want, atol=1e-6)
    with pytest.raises(UsageError, match=r"zenith.npy has shape \(3,\); range images \(2, 3\) need \[2\]"):
        kind.read_grid({"azimuth": np.zeros(3), "zenith": np.zeros(3)}, [ranges], "test")
    with pytest.raises(UsageError, match="cannot be turned into 3-D points"):
        get_kind("image").to_points(ranges, grid)


def test_the_same_points_as_the_builtin_shapes_set():
    scene = shapes.render_scene(np.random.default_rng(0), image_size=8, lidar_shape=(8, 24), supersample=1)
    ranges = scene["lidar"]
    azimuth = np.radians(np.linspace(*shapes.LIDAR_AZIMUTH_DEG, 24))
    zenith = np.radians(np.linspace(shapes.LIDAR_ZENITH_DEG[1], shapes.LIDAR_ZENITH_DEG[0], 8))
    grid = get_kind("range").read_grid({"azimuth": azimuth, "zenith": zenith}, [ranges], "shapes")
    assert grid["no_return"] in (None, shapes.MAX_RANGE)
    grid["no_return"] = shapes.MAX_RANGE
    np.testing.assert_allclose(get_kind("range").to_points(ranges, grid),
                               shapes.points_from_range(ranges, column_step=1), atol=1e-5)
