"""Neighbour search for the audit, through a FAISS index over normalised vectors (inner product = cosine),
query chunk by query chunk: memory is O(N k), never an N x N matrix."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np

CHUNK = 4096  # queries per search call


def flat_index(vectors: np.ndarray) -> faiss.Index:
    """An exact inner-product index over `vectors` [N, D] (float32)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def knn(vectors: np.ndarray, k: int, index: faiss.Index | None = None,
        queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every query (default: of every vector, itself left out): similarities
    [Q, k] (descending) and row numbers [Q, k] (-1 where fewer than k exist)."""
    index = index if index is not None else flat_index(vectors)
    own = queries is None
    queries = vectors if own else queries
    k_eff = min(k + int(own), index.ntotal)
    sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
    rows = np.full((len(queries), k), -1, dtype=np.int64)
    for start, chunk in _chunks(queries):
        s, i = index.search(chunk, k_eff)
        if own:  # drop each query itself (or, among exact copies, any one of them)
            s, i = _drop_self(s, i, np.arange(start, start + len(chunk)))
        n = min(k, s.shape[1])
        sims[start:start + len(chunk), :n], rows[start:start + len(chunk), :n] = s[:, :n], i[:, :n]
    return sims, rows


def _drop_self(s: np.ndarray, i: np.ndarray, me: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Each row's results without its own row number (the last column goes where it was absent)."""
    hit = i == me[:, None]
    hit[~hit.any(axis=1), -1] = True
    keep = ~hit
    return s[keep].reshape(len(s), -1), i[keep].reshape(len(i), -1)


def _chunks(queries: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    for start in range(0, len(queries), CHUNK):
        yield start, np.ascontiguousarray(queries[start:start + CHUNK], dtype=np.float32)


def pairs_above(vectors: np.ndarray, threshold: float, k: int = 16,
                index: faiss.Index | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of vectors whose cosine is at least `threshold`, among each vector's k nearest
    neighbours: rows i, rows j, cosines (each pair once)."""
    sims, rows = knn(vectors, k, index)
    q = np.repeat(np.arange(len(vectors)), rows.shape[1])
    s, r = sims.reshape(-1), rows.reshape(-1)
    keep = (r >= 0) & (s >= threshold)
    i, j = np.minimum(q[keep], r[keep]), np.maximum(q[keep], r[keep])
    pair = np.unique(np.stack([i, j], axis=1), axis=0) if keep.any() else np.zeros((0, 2), dtype=np.int64)
    cos = np.einsum("nd,nd->n", vectors[pair[:, 0]], vectors[pair[:, 1]]) if len(pair) else np.zeros(0)
    return pair[:, 0], pair[:, 1], cos.astype(np.float32)


def partner_ranks(a: np.ndarray, b: np.ndarray, block: int = 1024) -> tuple[np.ndarray, np.ndarray]:
    """For each row i: how many rows j of `b` score higher against a[i] than its own partner b[i] (0: the
    partner is first; ties do not count), and the row of `b` that a[i] scores highest. Blocks of `block`
    queries at a time: memory O(block x N)."""
    ranks = np.zeros(len(a), dtype=np.int64)
    best = np.zeros(len(a), dtype=np.int64)
    for start in range(0, len(a), block):
        qa = a[start:start + block]
        sims = qa @ b.T
        own = np.einsum("nd,nd->n", qa, b[start:start + block])
        ranks[start:start + len(qa)] = (sims > own[:, None] + 1e-5).sum(axis=1)
        best[start:start + len(qa)] = sims.argmax(axis=1)
    return ranks, best
