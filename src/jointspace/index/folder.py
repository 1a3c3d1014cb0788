"""An index folder on disk: its files, what marks one, and reading each file back with an error that
names the file when it cannot be read (truncated, overwritten, written by something else)."""

from __future__ import annotations

import sqlite3
from pathlib import Path

import faiss

from jointspace.data.shards import DataError, read_json
from jointspace.index.filters import COLUMNS, IndexStoreError
from jointspace.outputs import OutputType, json_with

FORMAT = "jointspace-index/1"
INDEX_FILE, DB_FILE, META_FILE = "index.faiss", "items.sqlite", "meta.json"
PREVIEWS_FILE = "previews.sqlite"  # a Milvus-backed folder: meta.json (uri, collection) and the previews
# what `index build --out` may replace: a FAISS folder or a Milvus one
INDEX_FOLDER = OutputType("jointspace index", ((META_FILE, INDEX_FILE), (META_FILE, PREVIEWS_FILE)),
                          json_with(META_FILE, "format", "fingerprint"))


def _first_line(err: BaseException) -> str:
    text = str(err).strip()
    return text.splitlines()[-1].strip() if text else type(err).__name__


def read_meta(path: Path) -> dict:
    """`meta.json` of an index folder, checked for the fields opening it needs."""
    try:
        meta = read_json(path)
    except DataError as err:
        raise IndexStoreError(str(err)) from None
    if meta.get("format") != FORMAT:
        raise IndexStoreError(f"{path}: format {meta.get('format')!r}, expected {FORMAT!r}")
    for name, low in (("dim", 1), ("next_id", 0)):
        value = meta.get(name)
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise IndexStoreError(f"{path}: {name} is {value!r}, expected an integer >= {low}")
    names = meta.get("class_names")
    if names is not None and not (isinstance(names, list) and all(isinstance(n, str) for n in names)):
        raise IndexStoreError(f"{path}: class_names is not a list of names")
    return meta


def read_faiss(path: Path, meta: dict) -> faiss.Index:
    """The FAISS index file, refused when FAISS cannot read it or it disagrees with `meta`."""
    try:
        index = faiss.read_index(str(path))
    except (RuntimeError, MemoryError) as err:  # garbage read as sizes can ask for any amount of memory
        raise IndexStoreError(f"{path}: cannot be read as a FAISS index ({_first_line(err)})") from None
    if index.d != meta["dim"]:
        raise IndexStoreError(f"{path}: vectors of dimension {index.d}, but meta.json says {meta['dim']}")
    n_saved = meta.get("n_vectors")
    if isinstance(n_saved, int) and index.ntotal != n_saved:
        raise IndexStoreError(f"{path}: holds {index.ntotal} vectors, but meta.json says {n_saved}")
    return index


def copy_items(path: Path, db: sqlite3.Connection) -> None:
    """Copy the item database at `path` (opened read-only) into `db`; refused when it is not an SQLite
    file or lacks the item and preview tables."""
    try:
        src = sqlite3.connect(f"{path.resolve().as_uri()}?mode=ro", uri=True)
        try:
            src.backup(db)
        finally:
            src.close()
        columns = tuple(r[1] for r in db.execute("PRAGMA table_info(items)"))
        db.execute("SELECT COUNT(*) FROM previews").fetchone()
    except sqlite3.DatabaseError as err:
        raise IndexStoreError(f"{path}: cannot be read as the index's SQLite item table ({_first_line(err)})") from None
    if columns != ("id", *COLUMNS):
        raise IndexStoreError(f"{path}: the items table has columns {list(columns)}, expected {['id', *COLUMNS]}")
