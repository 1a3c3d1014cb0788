"""Making an index of any size: the factory chosen by the number of vectors, and a build that takes the
vectors in chunks (spooled to disk, a random sample trains the quantizer, then added chunk by chunk),
so that no more than one chunk of vectors is ever in memory."""

from __future__ import annotations

import math
from collections.abc import Iterable
from pathlib import Path

import faiss
import numpy as np

from jointspace.index.store import IndexStore, IndexStoreError, index_ivf
from jointspace.index.vectors import ExactVectors

EXACT_MAX = 50_000  # below this many vectors the index is exact (IndexFlatIP)
COMPRESS_MIN = 2_000_000  # from this many on, compressed codes (IVF-PQ fast scan) re-ranked exactly
DEFAULT_NPROBE_FRACTION = 1 / 256  # IVF: probe nlist/256 lists (at least 8); bench/search.py: recall 1.0 at 1M
TRAIN_PER_LIST = 40  # FAISS's own advice: at least 39 training points per centroid
TRAIN_MIN = 10_240  # and PQ's 16 or 256 centroids per sub-vector want as many (40 x 256)
ADD_CHUNK = 262_144


def choose_factory(n_vectors: int, factory: str = "auto", dim: int = 256) -> str:
    """FAISS factory string: exact (`Flat`) below EXACT_MAX vectors, `IVF{nlist},Flat` up to COMPRESS_MIN,
    then `IVF{nlist},PQ{dim/4}x4fs`: 4-bit fast-scan codes of dim/8 bytes (32 at 256-d), whose candidates
    the store re-ranks with the exact vectors it keeps on disk. Fast-scan lists are cheap to scan, so
    the compressed tier uses fewer, longer lists (about sqrt(n)), which also bounds the k-means cost."""
    if factory != "auto":
        return factory
    if n_vectors < EXACT_MAX:
        return "Flat"
    if n_vectors < COMPRESS_MIN:
        return f"IVF{2 ** round(math.log2(4 * math.sqrt(n_vectors)))},Flat"
    m = max(d for d in range(1, max(dim // 4, 1) + 1) if dim % d == 0)
    return f"IVF{2 ** round(math.log2(math.sqrt(n_vectors)))},PQ{m}x4fs"


def default_search_params(index: faiss.Index, factory: str) -> dict:
    """Search knobs stored with an index: nprobe for IVF, efSearch for HNSW."""
    ivf = index_ivf(index)
    if ivf is not None:
        return {"nprobe": max(8, round(ivf.nlist * DEFAULT_NPROBE_FRACTION))}
    return {"efSearch": 128} if "HNSW" in factory.upper() else {}


def train_store(store: IndexStore, n_vectors: int, rows, seed: int = 0) -> None:
    """Train the store's quantizer on a random sample of `rows(ids)` (ids in range(n_vectors))."""
    if not store.needs_training:
        return
    ivf = index_ivf(store.index)
    n_train = min(n_vectors, max(TRAIN_MIN, TRAIN_PER_LIST * (int(ivf.nlist) if ivf is not None else 0)))
    sample = np.sort(np.random.default_rng(seed).choice(n_vectors, n_train, replace=False))
    try:
        store.train(rows(sample))
    except RuntimeError as err:
        raise IndexStoreError(f"factory {store.meta['factory']!r}: training on {n_train} vectors failed: "
                              f"{str(err).strip().splitlines()[-1]}") from None


def new_store(vectors: np.ndarray, factory: str = "auto", meta: dict | None = None, seed: int = 0) -> IndexStore:
    """An empty IndexStore for these vectors (all in memory): factory chosen by their number, trained on a
    sample of them. `build_store` is the same for vectors that come in chunks."""
    fac = choose_factory(len(vectors), factory, vectors.shape[1])
    store = IndexStore.create(vectors.shape[1], fac, meta)
    store.meta["search"] = default_search_params(store.index, fac)
    train_store(store, len(vectors), lambda ids: vectors[ids], seed)
    return store


def build_store(chunks: Iterable[tuple[np.ndarray, list[dict], dict[str, bytes]]], factory: str = "auto",
                meta: dict | None = None, seed: int = 0, nprobe: int | None = None,
                scratch_dir: Path | None = None) -> IndexStore:
    """An IndexStore of every (vectors, items, previews) chunk. Items go to the store's item table (a
    scratch file) and vectors to a scratch file as they come; then the factory is chosen by their number
    and trained on a random sample, and the vectors are added ADD_CHUNK at a time. A compressed factory
    keeps the spooled file as its exact vectors."""
    store: IndexStore | None = None
    spool: ExactVectors | None = None
    for vectors, items, previews in chunks:
        if store is None:
            store = IndexStore.create(np.shape(vectors)[-1], "Flat", meta, on_disk=True, scratch_dir=scratch_dir)
            spool = ExactVectors.new(store.scratch, store.dim)
        vectors = store.as_rows(vectors, len(items))
        ids = store.add_items(items, previews)
        spool.append(vectors, int(ids[0]) if len(ids) else spool.n, store.scratch)
    if store is None:
        raise IndexStoreError("build: no vectors to index")
    n = spool.n
    fac = choose_factory(n, factory, store.dim)
    store.use_factory(fac, spool)
    store.meta["search"] = default_search_params(store.index, fac)
    if nprobe is not None and "nprobe" in store.meta["search"]:
        store.meta["search"]["nprobe"] = int(nprobe)
    train_store(store, n, spool.rows, seed)
    for start in range(0, n, ADD_CHUNK):
        ids = np.arange(start, min(start + ADD_CHUNK, n), dtype=np.int64)
        store.index.add_with_ids(spool.rows(ids), ids)
    if store.exact is not spool:
        spool.path.unlink()  # an uncompressed index holds the vectors itself
    return store
