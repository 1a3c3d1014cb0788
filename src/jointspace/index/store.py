"""A FAISS index of joint-space vectors with SQLite metadata beside it, written atomically."""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import shutil
import sqlite3
import tempfile
import threading
import time
import uuid
from pathlib import Path

import faiss
import numpy as np

from jointspace.index.filters import IndexStoreError, parse_where, sql_where

__all__ = ["FingerprintError", "IndexStore", "IndexStoreError", "index_ivf", "new_faiss_index", "parse_where"]

FORMAT = "jointspace-index/1"
INDEX_FILE, DB_FILE, META_FILE = "index.faiss", "items.sqlite", "meta.json"
COLUMNS = ("key", "modality", "label", "label_name", "caption", "source", "split")
EXACT_FILTER_MAX = 20_000  # filters matching at most this many items are searched exactly
SCHEMA = """
CREATE TABLE items (id INTEGER PRIMARY KEY, key TEXT NOT NULL, modality TEXT NOT NULL, label INTEGER,
                    label_name TEXT, caption TEXT, source TEXT, split TEXT, UNIQUE (key, modality));
CREATE INDEX items_label ON items (label);
CREATE INDEX items_split ON items (split);
CREATE INDEX items_modality ON items (modality);
CREATE TABLE previews (key TEXT PRIMARY KEY, png BLOB NOT NULL);
"""


class FingerprintError(IndexStoreError):
    """The index was built by a different model than the one offered to query or extend it."""


def index_ivf(index: faiss.Index):
    """The IVF part of an index, or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


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
    ivf.set_direct_map_type(faiss.DirectMap.Hashtable)  # reconstruct + remove by id
    return index


class IndexStore:
    """Vectors in FAISS (ids = item ids) and items (one per sample and modality) in SQLite."""

    def __init__(self, index: faiss.Index, db: sqlite3.Connection, meta: dict, path: Path | None = None):
        self.index, self.db, self.meta, self.path = index, db, meta, path
        self._lock = threading.RLock()

    # ---- making, opening, saving ----
    @classmethod
    def create(cls, dim: int, factory: str = "Flat", meta: dict | None = None,
               search_params: dict | None = None) -> IndexStore:
        """An empty store (train it with `train` first when the factory needs training)."""
        db = sqlite3.connect(":memory:", check_same_thread=False)
        db.executescript(SCHEMA)
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        full = {"format": FORMAT, "dim": int(dim), "metric": "inner_product", "factory": factory,
                "search": dict(search_params or {}), "next_id": 0, "n_tombstones": 0, "created": now,
                "updated": now, **(meta or {})}
        return cls(new_faiss_index(dim, factory), db, full)

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
        meta = json.loads(meta_path.read_text())
        if meta.get("format") != FORMAT:
            raise IndexStoreError(f"{meta_path}: format {meta.get('format')!r}, expected {FORMAT!r}")
        for name in (INDEX_FILE, DB_FILE):
            if not (path / name).exists():
                raise IndexStoreError(f"{path / name}: missing; the index folder is incomplete")
        index = faiss.read_index(str(path / INDEX_FILE))
        src = sqlite3.connect(f"file:{path / DB_FILE}?mode=ro", uri=True)
        db = sqlite3.connect(":memory:", check_same_thread=False)
        try:
            src.backup(db)
        finally:
            src.close()
        return cls(index, db, meta, path)

    def save(self, path: str | Path | None = None) -> Path:
        """Write index, items and meta into a temporary folder, then swap it in place of `path`."""
        path = Path(path or self.path or "")
        if not str(path):
            raise IndexStoreError("save: no path given")
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.exists() and not (path / META_FILE).exists() and any(path.iterdir()):
            raise IndexStoreError(f"{path}: exists and is not a jointspace index; refusing to replace it")
        tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-", dir=path.parent))
        try:
            with self._lock:
                faiss.write_index(self.index, str(tmp / INDEX_FILE))
                out = sqlite3.connect(tmp / DB_FILE)
                self.db.backup(out)
                out.close()
                self.meta.update(n_items=self.n_items, n_vectors=int(self.index.ntotal),
                                 updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
                (tmp / META_FILE).write_text(json.dumps(self.meta, indent=2))
            _swap_in(tmp, path)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
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
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(items):
            raise IndexStoreError(f"add: expected vectors [{len(items)}, {self.dim}], got {list(vectors.shape)}")
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
            start = int(self.meta["next_id"])
            ids = np.arange(start, start + len(items), dtype=np.int64)
            self.index.add_with_ids(vectors, ids)
            rows = [(int(i), *(it.get(c) for c in COLUMNS)) for i, it in zip(ids, items)]
            self.db.executemany(f"INSERT INTO items (id, {', '.join(COLUMNS)}) VALUES (?{',?' * len(COLUMNS)})",
                                rows)
            self.db.executemany("INSERT OR REPLACE INTO previews (key, png) VALUES (?, ?)",
                                list((previews or {}).items()))
            self.db.commit()
            self.meta["next_id"] = start + len(items)
        return ids

    def delete(self, keys: list[str] | None = None, where: dict | list[str] | None = None) -> int:
        """Delete items by sample key (every modality) and/or by filter; returns how many went."""
        conds = parse_where(where)
        if keys:
            conds.setdefault("key", []).extend(keys)
        if not conds:
            raise IndexStoreError("delete: name keys or a where filter (refusing to delete everything)")
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

    # ---- search ----
    def search(self, queries: np.ndarray, k: int = 10, where: dict | list[str] | None = None,
               **search_params) -> list[list[dict]]:
        """Top-k items per query [Q, D] by inner product, optionally filtered by metadata."""
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise IndexStoreError(f"search: queries must be [Q, {self.dim}], got {list(q.shape)}")
        if k < 1:
            raise IndexStoreError(f"search: k must be >= 1, got {k}")
        conds = parse_where(where)
        with self._lock:
            allowed = None
            if conds:
                sql, params = sql_where(conds)
                allowed = self._ids(f"SELECT id FROM items{sql}", params)
            if allowed is not None and len(allowed) <= EXACT_FILTER_MAX:
                scores, ids = self._search_subset(q, k, allowed)
            else:
                extra = min(int(self.meta.get("n_tombstones", 0)), 4 * k + 256)  # deleted-but-unremovable ids
                kk = min(k + extra, max(int(self.index.ntotal), 1))
                params, _selector = self._params(allowed, search_params)  # the selector must outlive the call
                scores, ids = self.index.search(q, kk, params=params)
            found = ",".join(str(i) for i in {int(i) for i in ids.ravel() if i >= 0})  # ints only
            cols = ", ".join(f"i.{c}" for c in COLUMNS)
            rows = {r[0]: {**dict(zip(COLUMNS, r[1:-1])), "has_thumbnail": bool(r[-1])} for r in self.db.execute(
                f"SELECT i.id, {cols}, p.key IS NOT NULL FROM items i LEFT JOIN previews p ON p.key = i.key "
                f"WHERE i.id IN ({found})")}
        out = []
        for srow, irow in zip(scores, ids):
            hits = [{**rows[int(i)], "id": int(i), "score": float(s)} for s, i in zip(srow, irow) if int(i) in rows]
            out.append(hits[:k])
        return out

    def _search_subset(self, q: np.ndarray, k: int, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Exact search over a few ids (their vectors reconstructed from the index)."""
        if len(ids) == 0:
            return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
        vecs = self.index.reconstruct_batch(ids)
        sims = q @ vecs.T
        kk = min(k, len(ids))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        order = np.take_along_axis(-sims, top, 1).argsort(1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        return np.take_along_axis(sims, top, 1), ids[top]

    def _params(self, allowed: np.ndarray | None, overrides: dict) -> tuple[faiss.SearchParameters, object]:
        """Search parameters: the stored nprobe / efSearch (or overrides) and an id filter."""
        knobs = {**self.meta.get("search", {}), **{k: v for k, v in overrides.items() if v is not None}}
        sel = faiss.IDSelectorBatch(allowed) if allowed is not None else None
        kw = {"sel": sel} if sel is not None else {}
        if index_ivf(self.index) is not None:
            params = faiss.SearchParametersIVF(nprobe=int(knobs.get("nprobe", 16)), **kw)
        elif "HNSW" in self.meta.get("factory", "").upper():
            params = faiss.SearchParametersHNSW(efSearch=int(knobs.get("efSearch", 64)), **kw)
        else:
            params = faiss.SearchParameters(**kw)
        return params, sel

    def stats(self) -> dict:
        """Counts per modality and split, sizes, factory and the model fingerprint."""
        with self._lock:
            per = {c: dict(self.db.execute(f"SELECT {c}, COUNT(*) FROM items GROUP BY {c}").fetchall())
                   for c in ("modality", "split")}
            n_samples = self.db.execute("SELECT COUNT(DISTINCT key) FROM items").fetchone()[0]
        keep = ("dim", "factory", "search", "fingerprint", "run_dir", "created", "updated", "n_tombstones")
        return {"n_items": self.n_items, "n_samples": int(n_samples), "n_vectors": int(self.index.ntotal),
                "modalities": per["modality"], "splits": per["split"],
                **{k: self.meta.get(k) for k in keep}}


SLOW_SWAP_ENV = "JOINTSPACE_TEST_SLOW_INDEX_SWAP_S"


def recover_interrupted(path: Path) -> None:
    """An index folder missing because a write was killed after moving it aside: put the old version
    back (the new one was not in place yet). A killed write's staging folder (`.<name>.tmp-*`) is only
    left over; it is never read."""
    if path.exists() or not path.parent.exists():
        return
    with _swap_lock(path):  # a live write holds it between its two renames
        olds = sorted(path.parent.glob(f".{path.name}.old-*"), key=lambda p: p.stat().st_mtime)
        if not path.exists() and olds:
            os.replace(olds[-1], path)


@contextlib.contextmanager
def _swap_lock(path: Path):
    """An exclusive lock (a lock file beside the folder) held by a swap and by a recovery."""
    with open(path.parent / f".{path.name}.lock", "a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _swap_in(tmp: Path, path: Path) -> None:
    """Put folder `tmp` at `path`, replacing an old one; the old one is restored if the swap fails."""
    with _swap_lock(path):
        _swap_unlocked(tmp, path)


def _swap_unlocked(tmp: Path, path: Path) -> None:
    if not path.exists():
        os.replace(tmp, path)
        return
    old = path.parent / f".{path.name}.old-{uuid.uuid4().hex[:8]}"
    os.replace(path, old)
    if os.environ.get(SLOW_SWAP_ENV):  # crash tests only: widen the window between the two renames
        time.sleep(float(os.environ[SLOW_SWAP_ENV]))
    try:
        os.replace(tmp, path)
    except BaseException:
        os.replace(old, path)
        raise
    shutil.rmtree(old, ignore_errors=True)
