"""The read side of an IndexStore: nearest vectors (with the exact re-ranking of compressed codes),
search with metadata, counts and the memory the index takes."""

from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from jointspace.index.filters import COLUMNS, IndexStoreError, parse_where, sql_where

EXACT_FILTER_MAX = 20_000  # filters matching at most this many items are searched exactly


def index_ivf(index: faiss.Index):
    """The IVF part of an index, or None."""
    try:
        return faiss.extract_index_ivf(index)
    except RuntimeError:
        return None


def faiss_search(index, q: np.ndarray, k: int, params) -> tuple[np.ndarray, np.ndarray]:
    """FAISS's numpy search with search parameters. Importing pytorch-metric-learning's inference utilities
    imports faiss.contrib.torch_utils, which replaces `Index.search` process-wide with a torch-aware one
    that takes no `params`, keeping the original as `search_numpy`."""
    return getattr(index, "search_numpy", index.search)(q, k, params=params)


class StoreReads:
    """Mixed into IndexStore (which holds index, db, meta, exact and the lock)."""

    def nearest(self, queries: np.ndarray, k: int = 10, where: dict | list[str] | None = None,
                **search_params) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [Q, k'] of the nearest vectors by inner product (-1: none; ids may include
        tombstones): FAISS, then, for compressed codes, the exact re-ranking of k_factor x k candidates."""
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
                return self._search_subset(q, k, allowed)
            extra = min(int(self.meta.get("n_tombstones", 0)), 4 * k + 256)  # deleted-but-unremovable ids
            kk = min(k + extra, max(int(self.index.ntotal), 1))
            k_factor = int(search_params.pop("k_factor", None) or (self.meta.get("refine") or {}).get("k_factor", 1))
            params, _selector = self._params(allowed, search_params)  # the selector must outlive the call
            if self.exact is None:
                return faiss_search(self.index, q, kk, params)
            _, candidates = faiss_search(self.index, q, min(kk * k_factor, max(int(self.index.ntotal), 1)), params)
            return self.exact.rerank(q, candidates, kk)

    def search(self, queries: np.ndarray, k: int = 10, where: dict | list[str] | None = None,
               **search_params) -> list[list[dict]]:
        """Top-k items per query [Q, D] by inner product, optionally filtered by metadata."""
        with self._lock:
            scores, ids = self.nearest(queries, k, where, **search_params)
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
        vecs = self.exact.rows(ids) if self.exact is not None else self.index.reconstruct_batch(ids)
        sims = q @ vecs.T
        kk = min(k, len(ids))
        top = np.argpartition(-sims, kk - 1, axis=1)[:, :kk]
        order = np.take_along_axis(-sims, top, 1).argsort(1, kind="stable")
        top = np.take_along_axis(top, order, 1)
        return np.take_along_axis(sims, top, 1), ids[top]

    def _params(self, allowed: np.ndarray | None, overrides: dict) -> tuple[faiss.SearchParameters, object]:
        """Search parameters: the stored nprobe / efSearch (or overrides) and an id filter."""
        knobs = {**self.meta.get("search", {}), **{k: v for k, v in overrides.items() if v is not None}}
        knobs.pop("k_factor", None)
        sel = faiss.IDSelectorBatch(allowed) if allowed is not None else None
        kw = {"sel": sel} if sel is not None else {}
        if index_ivf(self.index) is not None:
            params = faiss.SearchParametersIVF(nprobe=int(knobs.get("nprobe", 16)), **kw)
        elif "HNSW" in self.meta.get("factory", "").upper():
            params = faiss.SearchParametersHNSW(efSearch=int(knobs.get("efSearch", 64)), **kw)
        else:
            params = faiss.SearchParameters(**kw)
        return params, sel

    def distinct(self, column: str) -> list:
        """The distinct values of an item column (one of COLUMNS), sorted."""
        if column not in COLUMNS:
            raise IndexStoreError(f"distinct: unknown column {column!r}")
        with self._lock:
            return sorted(r[0] for r in self.db.execute(f"SELECT DISTINCT {column} FROM items"))

    def label_names(self, start: int = 0) -> dict[int, str | None]:
        """label -> its (largest) name, for the labels >= start the items hold."""
        with self._lock:
            return dict(self.db.execute("SELECT label, MAX(label_name) FROM items WHERE label >= ? GROUP BY label",
                                        [int(start)]))

    def stats(self) -> dict:
        """Counts per modality and split, sizes, factory and the model fingerprint."""
        with self._lock:
            per = {c: dict(self.db.execute(f"SELECT {c}, COUNT(*) FROM items GROUP BY {c}").fetchall())
                   for c in ("modality", "split")}
            n_samples = self.db.execute("SELECT COUNT(DISTINCT key) FROM items").fetchone()[0]
        keep = ("dim", "factory", "search", "fingerprint", "run_dir", "created", "updated", "n_tombstones",
                "class_names")
        return {"n_items": self.n_items, "n_samples": int(n_samples), "n_vectors": int(self.index.ntotal),
                "modalities": per["modality"], "splits": per["split"], "refine": self.meta.get("refine"),
                **{k: self.meta.get(k) for k in keep}}

    def memory(self) -> dict:
        """Bytes the index takes (`index info`; not in `stats`, which the service answers per request: this
        serializes the whole FAISS index): FAISS (in RAM), the item table (in RAM, or in a scratch file when large),
        the exact vectors of a compressed index (on disk, memory-mapped), and this process's resident set."""
        with self._lock:
            faiss_bytes = int(faiss.serialize_index(self.index).nbytes)
            pages = self.db.execute("PRAGMA page_count").fetchone()[0] * self.db.execute("PRAGMA page_size").fetchone()[0]
            in_ram = self.db.execute("PRAGMA database_list").fetchone()[2] == ""
        return {"faiss_bytes": faiss_bytes, "items_bytes": int(pages), "items_in": "ram" if in_ram else "scratch file",
                "exact_vectors_bytes": self.exact.nbytes if self.exact is not None else 0,
                "in_ram_bytes": faiss_bytes + (int(pages) if in_ram else 0), **process_memory()}


def process_memory() -> dict:
    """This process's resident set (Linux /proc: anonymous and file-backed parts), in bytes."""
    try:
        status = Path("/proc/self/status").read_text().splitlines()
    except OSError:
        return {}
    want = {"VmRSS": "rss_bytes", "RssAnon": "rss_anon_bytes", "RssFile": "rss_file_bytes"}
    return {want[k]: int(v.split()[0]) * 1024 for k, v in (ln.split(":", 1) for ln in status) if k in want}
