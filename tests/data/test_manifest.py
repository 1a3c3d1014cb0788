import csv
import io
import json

import numpy as np
import pytest
from PIL import Image
from rich.console import Console

from jointspace.data.dataset import load_split
from jointspace.data.inspect import class_grid, format_inspection, inspect_shards, plot_class_balance
from jointspace.data.manifest import pack_folder, pack_manifest
from jointspace.data.shards import DataError, ReadStats, iter_samples, read_info, split_urls
from jointspace.kinds import Prep
from jointspace.outputs import OutputError

CLASSES = ("cat", "dog", "bird")


def _png(path, seed):
    arr = np.random.default_rng(seed).integers(0, 256, (6, 5, 3), dtype=np.uint8)
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(arr).save(path)
    return arr


def _rows(tmp_path, per_class=10):
    """Manifest rows (relative paths) plus the arrays they point at, keyed by caption."""
    files = tmp_path / "files"
    files.mkdir()
    rows, want = [], {}
    for i in range(per_class * len(CLASSES)):
        cls = CLASSES[i % len(CLASSES)]
        img = _png(files / f"img{i}.png", i)
        audio = np.random.default_rng(100 + i).normal(size=(3 + i % 4, 4)).astype(np.float32)
        depth = np.full((4, 6), float(i), dtype=np.float32)
        np.save(files / f"a{i}.npy", audio)
        np.save(files / f"d{i}.npy", depth)
        text = f"a {cls} number {i}"
        rows.append({"image": f"files/img{i}.png", "text": text, "label": cls, "audio": f"files/a{i}.npy",
                     "depth": f"files/d{i}.npy", "source": f"cam{i % 2}"})
        want[text] = {"label": cls, "image": img, "audio": audio, "depth": depth, "source": f"cam{i % 2}"}
    return rows, want


def _write_csv(path, rows):
    with path.open("w", newline="") as f:
        writer = csv.DictWriter(f, fieldnames=list(rows[0]))
        writer.writeheader()
        writer.writerows(rows)
    return path


def _write_jsonl(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def test_pack_csv_manifest_round_trip(tmp_path):
    rows, want = _rows(tmp_path)
    out = tmp_path / "ds"
    info = pack_manifest(_write_csv(tmp_path / "m.csv", rows), out, maxcount=4)
    assert info["skipped"] == 0 and info["class_names"] == ["bird", "cat", "dog"]
    assert info["modalities"] == {"image": "image", "text": "text", "audio": "sequence", "depth": "range"}
    assert {s: v["n_samples"] for s, v in info["splits"].items()} == {"train": 24, "val": 3, "test": 3}
    assert all(v["class_counts"] == {"0": 8, "1": 8, "2": 8} for k, v in info["splits"].items() if k == "train")
    seen = 0
    for split in info["splits"]:
        data = load_split(out, split, ["image", "text", "audio", "depth"], Prep(image_size=6), keep_raw=True)
        for i, text in enumerate(data.captions["text"]):
            w = want[text]
            assert data.class_names[data.labels[i]] == w["label"]
            np.testing.assert_array_equal(data.raw["image"][i], w["image"])
            np.testing.assert_array_equal(data.raw["audio"][i], w["audio"])
            np.testing.assert_array_equal(data.raw["depth"][i], w["depth"])
        seen += len(data)
    assert seen == 30
    metas = [s["meta"] for s in iter_samples(split_urls(out, "train"), ReadStats())]
    assert all(m["source"] in ("cam0", "cam1") and set(m) == {"source"} for m in metas)
    again = pack_manifest(tmp_path / "m.csv", tmp_path / "ds2", maxcount=4)
    assert again["splits"] == info["splits"]  # seeded split is reproducible


def test_pack_jsonl_split_column_keys_and_label_map(tmp_path):
    rows, want = _rows(tmp_path, per_class=4)
    for i, r in enumerate(rows):
        r.update(split=("train", "val", "test")[i % 3], key=f"item.{i}")
        del r["depth"]
    manifest = _write_jsonl(tmp_path / "m.jsonl", rows)
    info = pack_manifest(manifest, tmp_path / "ds", modalities={"image": "image", "text": "text"},
                         label_map={"cat": "pet", "dog": "pet"})
    assert info["class_names"] == ["bird", "pet"] and info["modalities"] == {"image": "image", "text": "text"}
    assert {s: v["n_samples"] for s, v in info["splits"].items()} == {"train": 4, "val": 4, "test": 4}
    samples = {s["key"]: s for s in iter_samples(split_urls(tmp_path / "ds", "val"), ReadStats())}
    assert set(samples) == {f"item_{i}" for i in range(1, 12, 3)}
    for key, s in samples.items():
        assert s["meta"]["key"] == key.replace("_", ".") and s["meta"]["audio"].endswith(".npy")
        expected = "bird" if want[s["text"]]["label"] == "bird" else "pet"
        assert info["class_names"][s["label"]] == expected


def test_integer_labels_sort_numerically(tmp_path):
    rows, _ = _rows(tmp_path, per_class=2)
    for i, r in enumerate(rows):
        r["label"] = (2, 10, 7)[i % 3]
    info = pack_manifest(_write_jsonl(tmp_path / "m.jsonl", rows), tmp_path / "ds", split_fractions=(1, 0, 0))
    assert info["class_names"] == ["2", "7", "10"] and list(info["splits"]) == ["train"]


def test_bad_rows_are_skipped_counted_and_named(tmp_path):
    rows, _ = _rows(tmp_path, per_class=7)
    (tmp_path / "files" / "garbage.png").write_bytes(b"definitely not a png")
    rows.append({**rows[0], "image": "files/nope.png", "text": "missing"})
    rows.append({**rows[0], "image": "files/garbage.png", "text": "garbage"})
    manifest = _write_csv(tmp_path / "m.csv", rows)
    info = pack_manifest(manifest, tmp_path / "ds", max_bad_fraction=0.1)
    assert info["skipped"] == 2 and sum(v["n_samples"] for v in info["splits"].values()) == 21
    assert read_info(tmp_path / "ds")["skipped"] == 2
    with pytest.raises(DataError, match=r"(?s)2 of 23 rows.*row 22 \(line 23\): image: missing file.*"
                                        r"row 23 \(line 24\): image: unreadable image"):
        pack_manifest(manifest, tmp_path / "ds3")
    assert not (tmp_path / "ds3").exists()


def test_pack_folder_with_and_without_captions(tmp_path):
    root = tmp_path / "photos"
    pics = {}
    for i in range(6):
        cls = ("red_fox", "owl")[i % 2]
        pics[i] = _png(root / cls / f"p{i}.png", i)
        if cls == "owl":
            (root / cls / f"p{i}.txt").write_text(f"an owl at night {i}\n")
    info = pack_folder(root, tmp_path / "ds", split_fractions=(1, 0, 0))
    assert info["class_names"] == ["owl", "red_fox"] and info["splits"]["train"]["n_samples"] == 6
    data = load_split(tmp_path / "ds", "train", ["image", "text"], Prep(image_size=6), keep_raw=True)
    for i, key in enumerate(data.keys):
        caption = data.captions["text"][i]
        if data.class_names[data.labels[i]] == "owl":
            assert caption.startswith("an owl at night")
        else:
            assert caption == "a photo of a red fox"
    metas = {s["meta"]["file"]: s for s in iter_samples(split_urls(tmp_path / "ds", "train"), ReadStats())}
    np.testing.assert_array_equal(metas["owl/p1.png"]["image"], pics[1])

    split_root = tmp_path / "presplit"
    for split, n in (("train", 4), ("val", 2), ("test", 1)):
        for i in range(n):
            _png(split_root / split / ("a", "b")[i % 2] / f"{i}.png", i)
    info = pack_folder(split_root, tmp_path / "ds2")
    assert {s: v["n_samples"] for s, v in info["splits"].items()} == {"train": 4, "val": 2, "test": 1}
    with pytest.raises(OutputError, match="replace the source"):
        pack_folder(root, root)


def test_inspect_reports_counts_and_truncated_shard(tmp_path):
    rows, _ = _rows(tmp_path, per_class=10)
    out = tmp_path / "ds"
    pack_manifest(_write_csv(tmp_path / "m.csv", rows), out, maxcount=6)
    result = inspect_shards(out)
    assert result["train"]["class_counts"] == {"bird": 8, "cat": 8, "dog": 8}
    assert result["val"]["n_samples"] == 3 and result["train"]["bad"] == 0
    mods = result["train"]["modalities"]
    assert mods["image"] == {"kind": "image", "shape": [6, 5, 3], "dtype": "uint8"}
    assert mods["text"]["shape"] == "text" and mods["depth"]["shape"] == [4, 6]
    console = Console(file=io.StringIO(), width=120)
    console.print(format_inspection(result))
    text = console.file.getvalue()
    assert "bird" in text and "(6, 5, 3) uint8" in text

    assert class_grid(out, "train", tmp_path / "grid.png", per_class=3).exists()
    assert Image.open(plot_class_balance(result, tmp_path / "bal.png")).size[0] > 100

    shard = split_urls(out, "train")[1]
    with open(shard, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    bad = inspect_shards(out)["train"]
    assert bad["bad"] > 0 and bad["n_samples"] + bad["bad"] == 24
    assert any("shard-000001.tar" in e for e in bad["errors"])
    with pytest.raises(DataError, match="shard-000001.tar"):
        load_split(out, "train", ["image", "text"], max_bad_fraction=0)


def test_pack_relative_paths_from_another_folder_and_carve_val(tmp_path, monkeypatch):
    """`data pack fashion` with a relative folder (train/test only) and a relative manifest, run from the
    folder above them; --val-fraction carves a stratified val split from train, the same for the same seed."""
    from typer.testing import CliRunner

    from jointspace.cli import app

    for split, n in (("train", 20), ("test", 6)):
        for i in range(n):
            _png(tmp_path / "fashion" / split / ("ankle boot", "shirt")[i % 2] / f"{i:05d}.png", i)
    (tmp_path / "tables").mkdir()
    rows, _ = _rows(tmp_path / "tables")
    _write_csv(tmp_path / "tables" / "m.csv", rows)
    monkeypatch.chdir(tmp_path)
    runner = CliRunner()
    r = runner.invoke(app, ["data", "pack", "fashion", "--out", "shards/fashion", "--val-fraction", "0.2"])
    assert r.exit_code == 0, r.output
    info = read_info(tmp_path / "shards" / "fashion")
    counts = {s: v["n_samples"] for s, v in info["splits"].items()}
    assert counts == {"train": 16, "val": 4, "test": 6}
    assert info["splits"]["val"]["class_counts"] == {"0": 2, "1": 2}  # stratified: 2 of each class's 10
    keys = lambda root: sorted(s["key"] for s in iter_samples(split_urls(root, "val"), ReadStats()))
    r = runner.invoke(app, ["data", "pack", "fashion", "--out", "shards/again", "--val-fraction", "0.2"])
    assert r.exit_code == 0 and keys(tmp_path / "shards" / "fashion") == keys(tmp_path / "shards" / "again")
    r = runner.invoke(app, ["data", "pack", "fashion", "--out", "shards/seed1", "--val-fraction", "0.2",
                            "--seed", "1"])
    assert r.exit_code == 0 and keys(tmp_path / "shards" / "seed1") != keys(tmp_path / "shards" / "fashion")
    monkeypatch.chdir(tmp_path / "fashion" / "train")  # the manifest from yet another folder
    r = runner.invoke(app, ["data", "pack", "../../tables/m.csv", "--out", "../../shards/csv"])
    assert r.exit_code == 0, r.output
    assert sum(v["n_samples"] for v in read_info(tmp_path / "shards" / "csv")["splits"].values()) == 30
