"""A damaged index folder, a foreign `--out` folder and another dataset's labels: every command answers
with one line on stderr and exit 2, changes nothing on disk, and label numbers keep one meaning."""

from __future__ import annotations

import shutil
import socket
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.data.shards import ReadStats, iter_samples, split_urls, write_dataset
from jointspace.index.build import add_shards, build_index
from jointspace.index.store import IndexStore, IndexStoreError


def snapshot(folder: Path) -> dict[str, bytes]:
    """Every file under the folder's parent (the index and anything written beside it), with its bytes; an
    empty writer lock file (what a writer leaves beside the folder once it has let go) is not counted."""
    return {str(p.relative_to(folder.parent)): p.read_bytes() for p in sorted(folder.parent.rglob("*"))
            if p.is_file() and not (p.name.endswith(".writer.lock") and p.stat().st_size == 0)}


def one_error_line(result) -> str:
    lines = [ln for ln in result.stderr.splitlines() if ln.strip()]
    assert result.exit_code == 2, result.output
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    assert "Traceback" not in result.output
    return lines[0]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


DAMAGE = {
    "index.faiss": lambda p: p.write_bytes(p.read_bytes()[: p.stat().st_size // 2]),  # truncated
    "items.sqlite": lambda p: p.write_bytes(b"\x00garbage, not a database" * 100),
    "meta.json": lambda p: p.write_text('{"format": "jointspace-index/1", "dim": 16,'),  # cut off mid-object
}
COMMANDS = {
    "search": lambda idx, tmp, shards: ["search", idx, "--text", "the digit three"],
    "search-vector": lambda idx, tmp, shards: ["search", idx, "--vector", str(tmp / "v.npy")],
    "serve": lambda idx, tmp, shards: ["serve", idx, "--port", str(free_port())],
    "info": lambda idx, tmp, shards: ["index", "info", idx],
    "add": lambda idx, tmp, shards: ["index", "add", idx, str(shards)],
    "delete": lambda idx, tmp, shards: ["index", "delete", idx, "digits-test-00000"],
}


@pytest.mark.parametrize("damaged", list(DAMAGE))
@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_damaged_index_file_is_one_line_naming_it_and_nothing_changes(tiny_index, digits_dir, tmp_path,
                                                                         monkeypatch, damaged, command):
    import uvicorn

    monkeypatch.setattr(uvicorn, "run", lambda *a, **kw: pytest.fail("serve started on a damaged index"))
    folder = tmp_path / "work" / "idx"
    shutil.copytree(tiny_index, folder)
    np.save(tmp_path / "v.npy", np.ones(16, np.float32))
    DAMAGE[damaged](folder / damaged)
    before = snapshot(folder)
    r = CliRunner().invoke(app, COMMANDS[command](str(folder), tmp_path, digits_dir))
    line = one_error_line(r)
    assert str(folder / damaged) in line and "serving" not in r.output
    assert snapshot(folder) == before


def test_open_names_the_file_and_what_is_wrong(tiny_index, tmp_path):
    folder = tmp_path / "idx"
    shutil.copytree(tiny_index, folder)
    faiss_bytes = (folder / "index.faiss").read_bytes()
    (folder / "index.faiss").write_bytes(faiss_bytes[:100])
    with pytest.raises(IndexStoreError, match=r"idx/index.faiss: cannot be read as a FAISS index \("):
        IndexStore.open(folder)
    (folder / "index.faiss").write_bytes(faiss_bytes)
    (folder / "items.sqlite").write_bytes(b"x" * 4096)
    with pytest.raises(IndexStoreError, match=r"idx/items.sqlite: cannot be read as the index's SQLite item table"):
        IndexStore.open(folder)
    shutil.copy(tiny_index / "items.sqlite", folder / "items.sqlite")
    (folder / "meta.json").write_text("[1, 2]")
    with pytest.raises(IndexStoreError, match=r"idx/meta.json: expected a JSON object"):
        IndexStore.open(folder)


def test_build_never_replaces_what_is_not_an_index(tiny_run, digits_dir, tmp_path, monkeypatch):
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep me")
    build = ["index", "build", str(tiny_run), str(digits_dir), "--split", "test", "--modality", "image"]
    line = one_error_line(CliRunner().invoke(app, [*build, "--out", str(mine), "--overwrite"]))
    assert "is not a jointspace index" in line and (mine / "notes.txt").read_text() == "keep me"
    assert sorted(p.name for p in mine.iterdir()) == ["notes.txt"]
    monkeypatch.chdir(mine)
    for out in (".", str(tmp_path), str(digits_dir), str(digits_dir.parent), str(tiny_run), str(tiny_run.parent)):
        line = one_error_line(CliRunner().invoke(app, [*build, "--out", out, "--overwrite"]))
        assert "working directory" in line or "would replace the source" in line, line
    assert (mine / "notes.txt").read_text() == "keep me" and (digits_dir / "dataset.json").exists()
    out = tmp_path / "idx"
    assert CliRunner().invoke(app, [*build, "--out", str(out)]).exit_code == 0
    line = one_error_line(CliRunner().invoke(app, [*build, "--out", str(out)]))
    assert "exists there already: pass --overwrite" in line
    r = CliRunner().invoke(app, [*build[:-1], "text", "--out", str(out), "--overwrite"])
    assert r.exit_code == 0, r.output
    assert IndexStore.open(out).stats()["modalities"] == {"text": 60}


def _shards(digits_dir: Path, out: Path, class_names: list[str], relabel: dict[int, int]) -> Path:
    """Digits test samples whose label is in `relabel`, labelled anew under another class list."""
    samples = [{**s, "label": relabel[s["label"]], "key": f"{out.name}-{s['key']}"}
               for s in iter_samples(split_urls(digits_dir, "test"), ReadStats()) if s["label"] in relabel]
    write_dataset(out, {"test": samples}, {"image": "image", "text": "text"}, class_names)
    return out


def test_adding_another_dataset_maps_its_labels_by_class_name(tiny_run, digits_dir, tmp_path):
    digits = ["zero", "one", "two", "three"]
    first = _shards(digits_dir, tmp_path / "a", digits, {0: 0, 1: 1, 2: 2, 3: 3})
    other = _shards(digits_dir, tmp_path / "b", ["cone", "three"], {4: 0, 3: 1})  # "cone" is 0 there
    out = tmp_path / "idx"
    build_index(tiny_run, first, out, modalities=["image"])
    assert IndexStore.open(out).meta["class_names"] == digits
    assert add_shards(out, other, modalities=["image"]) > 0
    store = IndexStore.open(out)
    assert store.meta["class_names"] == [*digits, "cone"] and store.stats()["class_names"] == [*digits, "cone"]
    pairs = store.db.execute("SELECT DISTINCT label, label_name FROM items ORDER BY label").fetchall()
    assert pairs == [(0, "zero"), (1, "one"), (2, "two"), (3, "three"), (4, "cone")]
    threes = store.search(np.ones((1, 16), np.float32), 100, where={"label": 3})[0]
    assert {h["label_name"] for h in threes} == {"three"} and {h["key"][0] for h in threes} == {"a", "b"}
