"""Query decoding and checks: images, .npy files (never unpickled), vectors, modality names."""

from __future__ import annotations

import io

import numpy as np
import pytest
from PIL import Image

from jointspace.index.query import Encoder, QueryError, parse_vector, read_image, read_npy
from jointspace.kinds import image as image_kind


def png(arr: np.ndarray) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(arr).save(buf, format="PNG")
    return buf.getvalue()


def npy(arr, allow_pickle: bool = False) -> bytes:
    buf = io.BytesIO()
    np.save(buf, arr, allow_pickle=allow_pickle)
    return buf.getvalue()


def test_read_image_converts_channels_and_refuses_junk(monkeypatch):
    rgb = np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8)
    assert read_image(png(rgb), channels=1).shape == (10, 12)
    assert read_image(png(rgb[..., 0]), channels=3).shape == (10, 12, 3)
    with pytest.raises(QueryError, match="up.png: not an image"):
        read_image(b"GIF89a but not really", 1, "up.png")
    with pytest.raises(QueryError, match="cut.png: not a readable image"):
        read_image(png(rgb)[:60], 1, "cut.png")
    monkeypatch.setattr(image_kind, "MAX_IMAGE_PIXELS", 100)
    with pytest.raises(QueryError, match="12x10 is larger than 100 pixels"):
        read_image(png(rgb), 3)


def test_read_npy_never_unpickles():
    assert read_npy(npy(np.ones((4, 13)))).dtype == np.float32
    with pytest.raises(QueryError, match="a.npy: not a .npy array"):
        read_npy(npy(np.array([{"x": 1}], dtype=object), allow_pickle=True), "a.npy")
    with pytest.raises(QueryError, match="no NumPy header"):
        read_npy(png(np.zeros((4, 4), np.uint8)))
    with pytest.raises(QueryError, match="expected a numeric"):
        read_npy(npy(np.array(["a", "b"])))
    with pytest.raises(QueryError, match="NaN or infinite"):
        read_npy(npy(np.array([1.0, np.nan])))
    with pytest.raises(QueryError, match="not a .npy array"):
        read_npy(npy(np.ones(3))[:20])


def test_parse_vector():
    v = parse_vector([3.0, 4.0], 2)
    assert v.shape == (1, 2) and np.allclose(v, [[0.6, 0.8]])
    for bad, msg in [([1.0], "has 1 values, the index has dimension 2"), ([0.0, 0.0], "non-zero"),
                     (["a", "b"], "not a list of numbers"), ([float("inf"), 1.0], "finite")]:
        with pytest.raises(QueryError, match=msg):
            parse_vector(bad, 2)


def test_encoder_checks_name_the_modality(tiny_run):
    enc = Encoder.from_run(tiny_run)
    assert enc.resolve("audio") == "audio" and enc.resolve("sequence") == "audio" and enc.resolve("text") == "text"
    with pytest.raises(QueryError, match="unknown modality 'lidar'; this model has: image .*audio \\(sequence\\)"):
        enc.resolve("lidar")
    with pytest.raises(QueryError, match=r"audio: expected feature frames \[T, 13\].*\(20, 7\)"):
        enc.encode("audio", [np.zeros((20, 7), np.float32)])
    with pytest.raises(QueryError, match="text: expected a non-empty string"):
        enc.encode("text", ["  "])
    with pytest.raises(QueryError, match="text modality: pass the text itself"):
        enc.encode_file("text", b"hello", "q.txt")
    rgba = np.zeros((9, 9, 4), np.uint8)
    assert enc.encode("image", [rgba, np.zeros((5, 5), np.uint8)]).shape == (2, 16)
    emb = enc.encode_file("image", png(np.full((30, 30, 3), 200, np.uint8)), "grey.png")
    assert emb.shape == (1, 16) and np.linalg.norm(emb) == pytest.approx(1.0, abs=1e-5)
