"""Hostile data: each gets a counted skip or a clear error, and nothing is written half-way (shards: a
decompression-bomb PNG, a pickled .npy, a non-UTF-8 caption, a zero-byte shard, a shard that is not a
tar; manifests: a path escaping its folder). The service's side: tests/serve/test_hostile_requests.py."""

from __future__ import annotations

import io
import json
import shutil
import struct
import tarfile
import zlib

import numpy as np
import pytest
from PIL import Image

from jointspace.data.dataset import load_split
from jointspace.data.manifest import pack_manifest
from jointspace.data.shards import DataError
from jointspace.kinds import Prep


def png_claiming(width: int, height: int) -> bytes:
    """A PNG whose header claims width x height (a decompression bomb's header) over 1 pixel of data."""
    buf = io.BytesIO()
    Image.new("L", (1, 1)).save(buf, format="PNG")
    data = bytearray(buf.getvalue())
    ihdr = struct.pack(">II", width, height) + bytes(data[24:29])
    data[16:29] = ihdr
    data[29:33] = struct.pack(">I", zlib.crc32(b"IHDR" + ihdr))
    return bytes(data)


def real_png() -> bytes:
    buf = io.BytesIO()
    Image.new("L", (8, 8), 128).save(buf, format="PNG")
    return buf.getvalue()


def pickled_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.array([{"os": "system"}], dtype=object), allow_pickle=True)
    return buf.getvalue()


def good_npy() -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.zeros((20, 13), np.float32))
    return buf.getvalue()


def _add_member(tar: tarfile.TarFile, name: str, data: bytes) -> None:
    info = tarfile.TarInfo(name)
    info.size = len(data)
    tar.addfile(info, io.BytesIO(data))


@pytest.fixture
def hostile_shards(digits_dir, tmp_path):
    """The digits shards plus, in train, one shard of three hostile samples, a zero-byte shard and a
    shard that is not a tar."""
    root = tmp_path / "digits"
    shutil.copytree(digits_dir, root)
    caption, image = b"the digit one", real_png()
    samples = {"bomb": {"image.png": png_claiming(20000, 20000)}, "big": {"image.png": png_claiming(5000, 5000)},
               "pickle": {"audio.npy": pickled_npy()}, "latin1": {"text.txt": "caf\xe9".encode("latin-1")}}
    with tarfile.open(root / "train" / "shard-000900.tar", "w") as tar:
        for key, hostile in samples.items():
            members = {"image.png": image, "text.txt": caption, "audio.npy": good_npy(), "cls": b"1", **hostile}
            for name, data in members.items():
                _add_member(tar, f"{key}.{name}", data)
    (root / "train" / "shard-000901.tar").write_bytes(b"")
    (root / "train" / "shard-000902.tar").write_bytes(b"this is not a tar archive" * 40)
    info = json.loads((root / "dataset.json").read_text())
    info["splits"]["train"]["n_samples"] += len(samples)
    (root / "dataset.json").write_text(json.dumps(info))
    return root, len(samples)


def test_hostile_samples_and_shards_are_skipped_counted_and_named(hostile_shards):
    root, n_hostile = hostile_shards
    data = load_split(root, "train", ["image", "text", "audio"], Prep(image_size=16), max_bad_fraction=0.5)
    assert len(data) == 60  # every good sample, none of the hostile ones
    errors = "\n".join(data.stats.errors)
    assert data.stats.n_missing >= n_hostile
    assert "DecompressionBomb" in errors  # PIL's own limit (2 x MAX_IMAGE_PIXELS)
    assert "5000x5000 image is larger than" in errors  # ours, below PIL's
    assert "allow_pickle=False" in errors  # the pickled array is refused, never loaded
    assert "UnicodeDecodeError" in errors
    assert "shard-000901.tar" in errors and "shard-000902.tar" in errors  # zero-byte and not-a-tar shards
    with pytest.raises(DataError, match="unreadable"):  # over the default max_bad_fraction: a clear error
        load_split(root, "train", ["image", "text", "audio"], Prep(image_size=16))


def test_a_manifest_path_that_escapes_its_folder_is_refused(tmp_path):
    folder = tmp_path / "m"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "ok.png")
    manifest = folder / "manifest.csv"
    manifest.write_text("image,label,split\nok.png,a,train\n../../etc/passwd,b,train\n")
    info = pack_manifest(manifest, tmp_path / "packed", max_bad_fraction=0.6)
    assert info["skipped"] == 1 and "leaves the manifest's folder" in json.dumps(info["skipped_rows"])
    manifest.write_text("image,label,split\n../../etc/passwd,b,train\n")
    with pytest.raises(DataError):
        pack_manifest(manifest, tmp_path / "refused")
    assert not (tmp_path / "refused").exists() and not list(tmp_path.glob(".refused*"))


def test_streamed_training_says_and_records_what_it_skipped(hostile_shards, tiny_cfg, capsys):
    """The same hostile shards streamed: each epoch's skipped samples are warned and land in run.json."""
    from jointspace.tasks.contrastive import train

    root, n_hostile = hostile_shards
    run = train(tiny_cfg(f"data.path={root}", "data.streaming=true", "data.shuffle_buffer=0", "eval.linear_probe=false",
                         name="streamed", epochs=2), show_progress=False)
    streamed = json.loads((run / "run.json").read_text())["skipped"]["train (streamed)"]
    assert streamed["n_skipped"] >= n_hostile and set(streamed["per_epoch"]) == {"1", "2"}
    assert any("DecompressionBomb" in r or "larger than" in r or "pickle" in r or "Unicode" in r or ".tar" in r
               for r in streamed["reasons"])
    assert "streamed train epoch 1" in capsys.readouterr().err
