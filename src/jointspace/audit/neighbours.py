"""Neighbour search for the audit, through a FAISS index over normalised vectors (inner product = cosine),
query chunk by query chunk: memory is O(N k), never an N x N matrix. The index is the one `index build`
would choose for that many vectors (`index.bulk.choose_factory`: exact below 50k, IVF above, probing
nlist/256 lists, at least 8... here at least 32)."""

from __future__ import annotations

from collections.abc import Iterator

import faiss
import numpy as np

from jointspace.index.bulk import choose_factory, default_search_params

CHUNK = 4096  # queries per search call
MIN_NPROBE = 32
RANK_SAMPLE = 4096  # partner ranks against at most this many candidates (a seeded random subset beyond)


def flat_index(vectors: np.ndarray) -> faiss.Index:
    """An exact inner-product index over `vectors` [N, D] (float32)."""
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(np.ascontiguousarray(vectors, dtype=np.float32))
    return index


def make_index(vectors: np.ndarray, seed: int = 0) -> faiss.Index:
    """The index `index build` chooses for this many vectors (exact, or IVF trained on a sample)."""
    factory = choose_factory(len(vectors), dim=vectors.shape[1])
    if factory == "Flat":
        return flat_index(vectors)
    vectors = np.ascontiguousarray(vectors, dtype=np.float32)
    index = faiss.index_factory(vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    rng = np.random.default_rng(seed)
    index.train(vectors[rng.choice(len(vectors), min(len(vectors), 64 * 1024), replace=False)])
    index.add(vectors)
    faiss.extract_index_ivf(index).nprobe = max(MIN_NPROBE, default_search_params(index, factory).get("nprobe", 8))
    return index


def knn(vectors: np.ndarray, k: int, index: faiss.Index | None = None,
        queries: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray]:
    """The k nearest neighbours of every query (default: of every vector, itself left out): similarities
    [Q, k] (descending) and row numbers [Q, k] (-1 where fewer than k exist)."""
    index = index if index is not None else make_index(vectors)
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


def pairs_above(vectors: np.ndarray, threshold: float, neighbours: tuple[np.ndarray, np.ndarray]
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Pairs (i < j) of vectors whose cosine is at least `threshold`, among each vector's nearest
    `neighbours` (knn's similarities and rows): rows i, rows j, cosines (each pair once)."""
    sims, rows = neighbours
    q = np.repeat(np.arange(len(vectors)), rows.shape[1])
    s, r = sims.reshape(-1), rows.reshape(-1)
    keep = (r >= 0) & (s >= threshold)
    i, j = np.minimum(q[keep], r[keep]), np.maximum(q[keep], r[keep])
    pair = np.unique(np.stack([i, j], axis=1), axis=0) if keep.any() else np.zeros((0, 2), dtype=np.int64)
    cos = np.einsum("nd,nd->n", vectors[pair[:, 0]], vectors[pair[:, 1]]) if len(pair) else np.zeros(0)
    return pair[:, 0], pair[:, 1], cos.astype(np.float32)


def candidate_pool(cands: np.ndarray, sample: int = RANK_SAMPLE, seed: int = 0) -> tuple[np.ndarray, bool]:
    """`cands`, or a seeded random `sample` of its rows (in their order) where it has more; and whether
    it was sampled."""
    if len(cands) <= sample:
        return cands, False
    return cands[np.sort(np.random.default_rng(seed).choice(len(cands), sample, replace=False))], True


def partner_ranks(a: np.ndarray, b: np.ndarray, block: int = 1024, sample: int = RANK_SAMPLE,
                  seed: int = 0, rows: np.ndarray | None = None) -> np.ndarray:
    """For each row i (of `rows`, default all): the share of rows j of `b` that score higher against a[i]
    than its own partner b[i] (0: the partner is first; ties do not count), counted over every row of `b`,
    or over a seeded random `sample` of them when `b` is larger. Blocks of `block` queries at a time: memory
    O(block x sample)."""
    pool, sampled = candidate_pool(b, sample, seed)
    rows = np.arange(len(a)) if rows is None else np.asarray(rows)
    share = np.zeros(len(rows))
    for start in range(0, len(rows), block):
        mine = rows[start:start + block]
        own = np.einsum("nd,nd->n", a[mine], b[mine])
        share[start:start + len(mine)] = ((a[mine] @ pool.T) > own[:, None] + 1e-5).sum(axis=1)
    return share / max(len(pool) - (not sampled), 1)  # the partner itself is among all candidates


def kth_best(queries: np.ndarray, cands: np.ndarray, k: int, block: int = 1024, sample: int = RANK_SAMPLE,
             seed: int = 0) -> np.ndarray:
    """Per query, the k-th highest similarity among `cands` (every row of it, a query's own partner
    included), or, where `cands` is larger than `sample`, the candidate at the same share of a seeded random
    `sample` of them (an estimate of the same quantile). Exact products, `block` queries at a time: memory
    O(block x sample) for any k, where a k-NN search would hold k results per query (and an IVF index returns
    fewer than k where its probed lists hold fewer)."""
    pool, sampled = candidate_pool(cands, sample, seed)
    kk = min(max(1, round(k * len(pool) / len(cands)) if sampled else k), len(pool))
    out = np.empty(len(queries), dtype=np.float64)
    for start in range(0, len(queries), block):
        sims = queries[start:start + block] @ pool.T
        out[start:start + len(sims)] = -np.partition(-sims, kk - 1, axis=1)[:, kk - 1]
    return out
