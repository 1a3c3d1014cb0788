"""Concurrent writers of one index (issue 27, point 5): `index add`, `index delete` and `index build
--overwrite` hold the folder's writer lock from open to save, so a second writer waits and starts from
what the first saved (no write is lost), or gives up past `--lock-timeout` with one line naming the
holder's pid. Saves are only slowed (an environment hook) to make the two writers overlap: with the lock
made a no-op, the two `index add` processes lose one's items."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.index.build import add_shards, build_index
from jointspace.index.lock import lock_file, writer_lock
from jointspace.index.store import SLOW_SAVE_ENV, IndexStore

from .test_folder_errors import one_error_line, snapshot

JOINTSPACE = str(Path(sys.executable).parent / "jointspace")
SLOW = {**os.environ, SLOW_SAVE_ENV: "2"}


def _start(*args: str) -> subprocess.Popen:
    return subprocess.Popen([JOINTSPACE, "index", *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=SLOW)


def _finish(proc: subprocess.Popen) -> str:
    out, err = proc.communicate(timeout=120)
    assert proc.returncode == 0, err
    return out


def test_two_add_processes_at_once_lose_no_write(tiny_run, digits_dir, tmp_path):
    folder = tmp_path / "idx"
    build_index(tiny_run, digits_dir, folder, splits=["test"], modalities=["image"])
    first = _start("add", str(folder), str(digits_dir), "--split", "val", "--modality", "image")
    second = _start("add", str(folder), str(digits_dir), "--split", "test", "--modality", "text")
    assert "added 60 items" in _finish(first) and "added 60 items" in _finish(second)
    store = IndexStore.open(folder)
    assert store.stats()["modalities"] == {"image": 120, "text": 60}  # both adds, and the build
    assert store.n_items == store.index.ntotal == 180
    assert lock_file(folder).read_text() == ""  # no holder left


def test_delete_waits_for_an_add_and_starts_from_what_it_saved(tiny_run, digits_dir, tmp_path, monkeypatch):
    folder = tmp_path / "idx"
    build_index(tiny_run, digits_dir, folder, splits=["test"], modalities=["image"])
    monkeypatch.setenv(SLOW_SAVE_ENV, "2")
    added: list[int] = []
    adding = threading.Thread(target=lambda: added.append(add_shards(folder, digits_dir, ["val"], ["image"])))
    saving, save = threading.Event(), IndexStore.save

    def noted_save(store: IndexStore, path=None):
        if threading.current_thread() is adding:
            saving.set()  # the add has read the folder and is about to write it (slowed)
        return save(store, path)

    monkeypatch.setattr(IndexStore, "save", noted_save)
    adding.start()
    assert saving.wait(60)
    r = CliRunner().invoke(app, ["index", "delete", str(folder), "--where", "split=val"])
    adding.join()
    assert r.exit_code == 0 and added == [60], r.output
    assert "deleted 60 items" in r.stdout  # the add's items: it read the folder after the add saved
    store = IndexStore.open(folder)
    assert store.stats()["splits"] == {"test": 60} and store.n_items == 60


COMMANDS = {
    "add": lambda idx, run, shards: ["index", "add", idx, str(shards), "--split", "val"],
    "delete": lambda idx, run, shards: ["index", "delete", idx, "--where", "split=test"],
    "build": lambda idx, run, shards: ["index", "build", str(run), str(shards), "--out", idx, "--overwrite"],
}


@pytest.mark.parametrize("command", list(COMMANDS))
def test_a_writer_past_its_lock_timeout_names_the_holder_and_changes_nothing(tiny_run, digits_dir, tmp_path,
                                                                              command):
    folder = tmp_path / "work" / "idx"
    folder.parent.mkdir()
    build_index(tiny_run, digits_dir, folder, splits=["test"], modalities=["image"])
    before = snapshot(folder)
    with writer_lock(folder, timeout_s=0):
        t0 = time.monotonic()
        r = CliRunner().invoke(app, [*COMMANDS[command](str(folder), tiny_run, digits_dir), "--lock-timeout", "1"])
        waited = time.monotonic() - t0
    line = one_error_line(r)
    assert f"pid {os.getpid()}" in line and str(folder) in line and "--lock-timeout" in line, line
    assert waited >= 1
    assert snapshot(folder) == before
