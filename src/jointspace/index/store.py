"""A FAISS index of joint-space vectors with SQLite metadata beside it, written atomically."""

from __future__ import annotations

import json
import os
import sqlite3
import tempfile
import threading
import time
from pathlib import Path

import faiss
import numpy as np

from jointspace.index.filters import (
    COLUMNS,
    FingerprintError,
    IndexStoreError,
    delete_conditions,
    parse_where,
    sql_where,
)
from jointspace.index.folder import DB_FILE, FORMAT, INDEX_FILE, META_FILE, copy_items, read_faiss, read_meta
from jointspace.index.reading import StoreReads, index_ivf, process_memory
from jointspace.index.vectors import DEFAULT_K_FACTOR, VECTORS_FILE, ExactVectors, keeps_exact_vectors
from jointspace.outputs import staging
from jointspace.swap import SLOW_SWAP_ENV, owned_prefix, recover_interrupted, remove_leftovers

__all__ = ["DB_FILE", "FORMAT", "INDEX_FILE", "META_FILE", "SLOW_SWAP_ENV", "FingerprintError",
           "IndexStore", "IndexStoreError", "index_ivf", "new_faiss_index", "parse_where", "process_memory"]

SCRATCH_PREFIX = ".jointspace-scratch-"
SLOW_SAVE_ENV = "JOINTSPACE_TEST_SLOW_INDEX_SAVE_S"  # lock tests only: a pause before a save writes anything
DB_MEMORY_MAX = 256 << 20  # item tables larger than this are worked on in a scratch file, not in RAM
SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT NOT NULL, modality TEXT NOT NULL, label INTEGER,
                    label_name TEXT, caption TEXT, source TEXT, split TEXT, UNIQUE (key, modality));
CREATE INDEX items_label ON items (label);
CREATE INDEX items_split ON items (split);
CREATE INDEX items_modality ON items (modality);
CREATE TABLE previews (key TEXT PRIMARY KEY, png BLOB NOT NULL);
"""


def new_faiss_index(dim: int, factory: str) -> faiss.Index:
    """An inner-product index from a factory string that takes explicit int64 ids."""
    try:
        index = faiss.index_factory(dim, factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as err:
        first = str(err).strip().splitlines()[-1] if str(err).strip() else "invalid"
        raise IndexStoreError(f"factory {factory!r}: not a valid FAISS index factory string ({first})") from None
    ivf = index_ivf(index)
    if ivf is None:
        return faiss.IndexIDMap2(index)
    if not isinstance(faiss.downcast_index(ivf), faiss.IndexIVFFastScan):  # fast-scan lists remove by scanning, without a map
        ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct + remove by id
    return index


class IndexStore(StoreReads):
    """Vectors in FAISS (ids = item ids) and items (one per sample and modality) in SQLite."""

    def __init__(self, index: faiss.Index, db: sqlite3.Connection | None, meta: dict, path: Path | None = None,
                 scratch_dir: Path | None = None):
        self.index, self.db, self.meta, self.path = index, db, meta, path
        self.exact: ExactVectors | None = None  # compressed factories: the vectors that re-rank candidates
        self._lock = threading.RLock()
        self._scratch_dir, self._scratch = scratch_dir, None

    @property
    def scratch(self) -> Path:
        """This store's private folder (a large item table, appended exact vectors), removed with it."""
        if self._scratch is None:
            folder = Path(self._scratch_dir or tempfile.gettempdir())
            remove_leftovers(folder, SCRATCH_PREFIX)
            self._scratch = tempfile.TemporaryDirectory(prefix=owned_prefix(SCRATCH_PREFIX), dir=folder)
        return Path(self._scratch.name)

    def _new_db(self, on_disk: bool) -> sqlite3.Connection:
        db = sqlite3.connect(self.scratch / DB_FILE if on_disk else ":memory:", check_same_thread=False)
        if on_disk:  # a private working copy: the saved file is written by `save`
            db.execute("PRAGMA synchronous=OFF")
            db.execute("PRAGMA journal_mode=OFF")
        return db

    def use_factory(self, factory: str, spooled: ExactVectors | None = None) -> None:
        """Give an empty store another FAISS index; a compressed one keeps `spooled` as its exact vectors."""
        if self.index.ntotal:
            raise IndexStoreError("use_factory: the index already holds vectors")
        self.index, self.meta["factory"] = new_faiss_index(self.dim, factory), factory
        self.exact, self.meta["refine"] = None, None
        if keeps_exact_vectors(factory):
            self.exact = spooled if spooled is not None and spooled.private else ExactVectors.new(self.scratch, self.dim)
            self.meta["refine"] = {"k_factor": DEFAULT_K_FACTOR}

    # ---- making, opening, saving ----
    @classmethod
    def create(cls, dim: int, factory: str = "Flat", meta: dict | None = None,
               search_params: dict | None = None, on_disk: bool = False,
               scratch_dir: Path | None = None) -> IndexStore:
        """An empty store (train it with `train` first when the factory needs training); `on_disk`: its
        item table is built in a scratch file (under `scratch_dir`) instead of RAM."""
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        full = {"format": FORMAT, "dim": int(dim), "metric": "inner_product", "factory": factory,
                "search": dict(search_params or {}), "next_id": 0, "n_tombstones": 0, "created": now,
                "updated": now, **(meta or {})}
        store = cls(faiss.IndexFlatIP(dim), None, full, scratch_dir=scratch_dir)
        store.db = store._new_db(on_disk)
        store.db.executescript(SCHEMA)
        store.use_factory(factory)
        return store

    @classmethod
    def open(cls, path: str | Path, recover: bool = False) -> IndexStore:
        """Load an index folder into memory. `recover` (commands, not a serving process): a folder that
        a write killed between its two renames left missing is restored from the old version beside it."""
        path = Path(path)
        if recover:
            recover_interrupted(path)
        meta_path = path / META_FILE
        if not meta_path.exists():
            raise IndexStoreError(f"{path}: not a jointspace index (no {META_FILE}); build one with "
                                  "`jointspace index build`")
        meta = read_meta(meta_path)
        for name in (INDEX_FILE, DB_FILE):
            if not (path / name).exists():
                raise IndexStoreError(f"{path / name}: missing; the index folder is incomplete")
        store = cls(read_faiss(path / INDEX_FILE, meta), None, meta, path, scratch_dir=path.parent)
        store.db = store._new_db(on_disk=(path / DB_FILE).stat().st_size > DB_MEMORY_MAX)
        try:
            copy_items(path / DB_FILE, store.db)
            if meta.get("refine"):
                store.exact = ExactVectors.open(path / VECTORS_FILE, meta["dim"], meta["next_id"])
        except BaseException:
            store.close()
            raise
        return store

    def close(self) -> None:
        """Close the item table and remove this store's scratch folder (if it made one)."""
        self.db.close()
        if self._scratch is not None:
            self._scratch.cleanup()
            self._scratch = None

    def save(self, path: str | Path | None = None) -> Path:
        """Write index, items and meta into a temporary folder, then swap it in place of `path`."""
        path = Path(path or self.path or "")
        if not str(path):
            raise IndexStoreError("save: no path given")
        if path.exists() and not (path / META_FILE).exists() and any(path.iterdir()):
            raise IndexStoreError(f"{path}: exists and is not a jointspace index; refusing to replace it")
        if os.environ.get(SLOW_SAVE_ENV):  # widen the window in which a second writer without the lock would read
            time.sleep(float(os.environ[SLOW_SAVE_ENV]))
        with staging(path) as tmp, self._lock:
            faiss.write_index(self.index, str(tmp / INDEX_FILE))
            if self.exact is not None:
                self.exact.save_into(tmp)
            out = sqlite3.connect(tmp / DB_FILE)
            self.db.backup(out)
            out.close()
            self.meta.update(n_items=self.n_items, n_vectors=int(self.index.ntotal),
                             updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
            (tmp / META_FILE).write_text(json.dumps(self.meta, indent=2))
        self.path = path
        return path

    def check_model(self, fingerprint: str, run_dir: str | Path | None = None) -> None:
        """Refuse a model whose fingerprint differs from the one that built the index."""
        built = self.meta.get("fingerprint")
        if built and built != fingerprint:
            raise FingerprintError(
                f"{self.path or 'index'}: built with model {built[:12]} (run {self.meta.get('run_dir')}), but "
                f"{run_dir or 'the given run'} is model {fingerprint[:12]}; embeddings of different models "
                "are not comparable: query with the original run or rebuild the index")

    # ---- items ----
    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def n_items(self) -> int:
        with self._lock:
            return int(self.db.execute("SELECT COUNT(*) FROM items").fetchone()[0])

    @property
    def needs_training(self) -> bool:
        return not self.index.is_trained

    def train(self, vectors: np.ndarray) -> None:
        """Train the quantizer (IVF/PQ) on a sample of vectors."""
        self.index.train(np.ascontiguousarray(vectors, dtype=np.float32))

    def add(self, vectors: np.ndarray, items: list[dict], previews: dict[str, bytes] | None = None,
            replace: bool = False) -> np.ndarray:
        """Add vectors [N, D] with one item dict each (key, modality, label, ...); returns their ids."""
        vectors = self.as_rows(vectors, len(items))
        if self.needs_training:
            raise IndexStoreError(f"add: factory {self.meta['factory']!r} needs training first")
        with self._lock:
            pairs = [(str(it["key"]), str(it["modality"])) for it in items]
            if len(set(pairs)) != len(pairs):
                raise IndexStoreError("add: the same (key, modality) appears twice in one batch")
            taken = [p for p in pairs if self.db.execute(
                "SELECT 1 FROM items WHERE key=? AND modality=?", p).fetchone()]
            if taken and not replace:
                shown = ", ".join(f"{k}/{m}" for k, m in taken[:5])
                raise IndexStoreError(f"add: {len(taken)} items already in the index ({shown}); use replace")
            for key, modality in taken:
                self._delete_ids(self._ids("SELECT id FROM items WHERE key=? AND modality=?", [key, modality]))
            ids = self.add_items(items, previews)
            self.index.add_with_ids(vectors, ids)
            if self.exact is not None:
                self.exact.append(vectors, int(ids[0]) if len(ids) else self.exact.n, self.scratch)
        return ids

    def as_rows(self, vectors: np.ndarray, n_items: int) -> np.ndarray:
        """Vectors as contiguous float32 [n_items, dim], or a clear error."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != n_items:
            raise IndexStoreError(f"add: expected vectors [{n_items}, {self.dim}], got {list(vectors.shape)}")
        return vectors

    def add_items(self, items: list[dict], previews: dict[str, bytes] | None = None) -> np.ndarray:
        """Give items the next ids and write them (not their vectors: `add` does both); a (key, modality)
        already there is refused."""
        with self._lock:
            start = int(self.meta["next_id"])
            ids = np.arange(start, start + len(items), dtype=np.int64)
            rows = [(int(i), *(it.get(c) for c in COLUMNS)) for i, it in zip(ids, items)]
            try:
                self.db.executemany(f"INSERT INTO items (id, {', '.join(COLUMNS)}) "
                                    f"VALUES (?{',?' * len(COLUMNS)})", rows)
            except sqlite3.IntegrityError:
                self.db.rollback()
                raise IndexStoreError("add: the same (key, modality) appears twice among the items") from None
            self.db.executemany("INSERT OR REPLACE INTO previews (key, png) VALUES (?, ?)",
                                list((previews or {}).items()))
            self.db.commit()
            self.meta["next_id"] = start + len(items)
        return ids

    def delete(self, keys: list[str] | None = None, where: dict | list[str] | None = None) -> int:
        """Delete items by sample key (every modality) and/or by filter; returns how many went."""
        conds = delete_conditions(keys, where)
        with self._lock:
            sql, params = sql_where(conds)
            ids = self._ids(f"SELECT id FROM items{sql}", params)
            self._delete_ids(ids)
            self.db.execute("DELETE FROM previews WHERE key NOT IN (SELECT key FROM items)")
            self.db.commit()
        return len(ids)

    def _delete_ids(self, ids: np.ndarray) -> None:
        """Remove ids from FAISS (or tombstone them where the index cannot remove) and from SQLite."""
        if len(ids) == 0:
            return
        try:
            self.index.remove_ids(ids)
        except RuntimeError:  # e.g. HNSW: the vector stays, search drops ids that are not in `items`
            self.meta["n_tombstones"] = int(self.meta.get("n_tombstones", 0)) + len(ids)
        self.db.executemany("DELETE FROM items WHERE id=?", [(int(i),) for i in ids])

    def _ids(self, sql: str, params: list) -> np.ndarray:
        return np.array([r[0] for r in self.db.execute(sql, params)], dtype=np.int64)

    def get(self, key: str) -> dict | None:
        """One sample: its metadata, indexed modalities and whether it has a preview."""
        with self._lock:
            rows = self.db.execute(f"SELECT {', '.join(COLUMNS)} FROM items WHERE key=? ORDER BY modality",
                                   [key]).fetchall()
            has_preview = self.db.execute("SELECT 1 FROM previews WHERE key=?", [key]).fetchone() is not None
        if not rows:
            return None
        item = dict(zip(COLUMNS, rows[0]))
        item.pop("modality")
        return {**item, "modalities": [r[1] for r in rows], "has_thumbnail": has_preview}

    def preview(self, key: str) -> bytes | None:
        """PNG preview of a sample, if one was stored."""
        with self._lock:
            row = self.db.execute("SELECT png FROM previews WHERE key=?", [key]).fetchone()
        return bytes(row[0]) if row else None
