"""open_clip-style CSV datasets (`--dataset-type csv`): trained without packing, images relative to the CSV."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.config import load_config
from jointspace.data.dataset import load_split
from jointspace.data.sources import source_of

from .test_webdataset import TINY


def write_csv(folder, name: str, n: int, start: int = 0, sep: str = "\t", labels: bool = True) -> None:
    (folder / "img").mkdir(parents=True, exist_ok=True)
    lines = ["filepath" + sep + "title" + (sep + "label" if labels else "")]
    for i in range(start, start + n):
        colour = ("red", "blue")[i % 2]
        arr = np.full((10, 10, 3), (200, 30, 30) if colour == "red" else (30, 30, 200), np.uint8)
        Image.fromarray(arr).save(folder / "img" / f"{i}.png")
        lines.append(sep.join([f"img/{i}.png", f"a {colour} tile {i}"] + ([colour] if labels else [])))
    (folder / name).write_text("\n".join(lines) + "\n")


def test_csv_dataset_trains_and_evaluates_from_another_folder(tmp_path, monkeypatch):
    write_csv(tmp_path / "d", "train.tsv", 32)
    write_csv(tmp_path / "d", "test.tsv", 8, start=100)
    (tmp_path / "d" / "img" / "5.png").write_bytes(b"not a png")  # one unreadable row: skipped and counted
    (tmp_path / "elsewhere").mkdir()
    monkeypatch.chdir(tmp_path / "elsewhere")
    cfg = load_config(None, ["output_dir=runs", "name=csv", "data.csv=../d/train.tsv", "data.test_csv=../d/test.tsv",
                             "data.max_bad_fraction=0.05", "train.epochs=2", *TINY])
    data = load_split(source_of(cfg.data), "train", ["image", "text"], max_bad_fraction=0.05)
    assert len(data) == 31 and data.stats.n_bad == 1 and data.class_names == ["blue", "red"]
    assert data.captions["text"][0] == "a red tile 0" and data.labels[0] == 1
    sets = [x for o in ["output_dir=runs", "name=csv2", "data.csv=../d/train.tsv", "data.test_csv=../d/test.tsv",
                        "data.max_bad_fraction=0.05", "train.epochs=2", *TINY] for x in ("--set", o)]
    r = CliRunner().invoke(app, ["train", str(tmp_path / "empty.yaml"), *sets])
    assert r.exit_code == 2 and "no such config file" in " ".join(r.output.split())
    (tmp_path / "empty.yaml").write_text("task: contrastive\n")
    r = CliRunner().invoke(app, ["train", str(tmp_path / "empty.yaml"), *sets])
    assert r.exit_code == 0, r.output
    r = CliRunner().invoke(app, ["eval", "runs/csv2"])
    assert r.exit_code == 0, r.output
    ev = json.loads((tmp_path / "elsewhere" / "runs" / "csv2" / "eval.json").read_text())
    assert ev["n_samples"] == 8 and "zero_shot" in ev


def test_csv_without_labels_and_another_separator(tmp_path):
    write_csv(tmp_path, "t.csv", 6, sep=",", labels=False)
    cfg = load_config(None, [f"data.csv={tmp_path / 't.csv'}", "data.csv_separator=,"])
    data = load_split(source_of(cfg.data), "train", ["image", "text"])
    assert data.labels.tolist() == list(range(6)) and data.class_names == []  # instance positives
