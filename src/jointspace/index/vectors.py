"""The exact vectors beside a compressed index: an append-only float32 file, read memory-mapped, that
re-ranks the compressed codes' candidates (the refine step), so only the codes need to sit in RAM."""

from __future__ import annotations

import mmap
import os
import re
import shutil
from pathlib import Path

import numpy as np

from jointspace.index.filters import IndexStoreError

VECTORS_FILE = "vectors.f32"
LOSSY = re.compile(r"PQ|SQ|LSH|RQ|ITQ")  # factory parts whose codes only approximate the vectors
OWN_REFINE = re.compile(r"RFLAT|REFINE")  # FAISS refines those itself, from vectors it holds in RAM
RERANK_QUERIES = 128  # queries re-ranked at a time (bounds the gathered rows' memory)
COPY_BYTES = 64 << 20
MAPPED_ROWS_MAX = 1024  # rows read before their pages are unmapped: a fault maps up to 16 neighbouring
# cached pages (the kernel's fault-around), so at most ~64 MB of the file is ever in this process's RSS
DEFAULT_K_FACTOR = 8  # candidates per wanted hit that the exact vectors re-rank (bench/search.py: recall
# 0.984 at 4, 0.987 at 16 on 1M x 256)


def keeps_exact_vectors(factory: str) -> bool:
    """Whether an index of this factory keeps its exact vectors on disk to re-rank candidates."""
    upper = factory.upper()
    return bool(LOSSY.search(upper)) and not OWN_REFINE.search(upper)


class ExactVectors:
    """Rows [n, dim] float32, row i = item id i. Ids are never reused, so the file only grows.

    A saved index's file is only read; the first append copies it into the store's own scratch
    folder, so a process that maps the saved file never sees it change.
    """

    def __init__(self, path: Path, dim: int, n: int, private: bool):
        self.path, self.dim, self.n, self.private = path, int(dim), int(n), private
        self._map: np.ndarray | None = None
        self._mapped_rows = 0

    @classmethod
    def new(cls, folder: Path, dim: int) -> ExactVectors:
        path = folder / VECTORS_FILE
        path.write_bytes(b"")
        return cls(path, dim, 0, private=True)

    @classmethod
    def open(cls, path: Path, dim: int, n: int) -> ExactVectors:
        need = int(n) * int(dim) * 4
        if not path.exists() or path.stat().st_size < need:
            size = path.stat().st_size if path.exists() else 0
            raise IndexStoreError(f"{path}: {size} bytes, expected at least {need} ({n} vectors of {dim} float32)")
        return cls(path, dim, n, private=False)

    @property
    def nbytes(self) -> int:
        return self.n * self.dim * 4

    def append(self, vectors: np.ndarray, start: int, scratch: Path) -> None:
        """Write rows `start`.. (the ids FAISS just got); a saved file is copied to `scratch` first."""
        if start != self.n:
            raise IndexStoreError(f"exact vectors: rows must follow on (have {self.n}, asked to write at {start})")
        if not self.private:
            self._copy_to(scratch / VECTORS_FILE)
        with open(self.path, "r+b") as f:
            f.seek(start * self.dim * 4)
            f.write(np.ascontiguousarray(vectors, dtype=np.float32).tobytes())
        self.n += len(vectors)
        self._map = None

    def _copy_to(self, dest: Path) -> None:
        with open(self.path, "rb") as src, open(dest, "wb") as out:
            left = self.nbytes
            while left:
                block = src.read(min(COPY_BYTES, left))
                out.write(block)
                left -= len(block)
        self.path, self.private, self._map = dest, True, None

    def save_into(self, folder: Path) -> None:
        """Put the file into a folder being written: a hard link (rows are never rewritten), or a copy."""
        dest = folder / VECTORS_FILE
        try:
            os.link(self.path, dest)
        except OSError:
            shutil.copyfile(self.path, dest)

    def rows(self, ids: np.ndarray) -> np.ndarray:
        """The vectors of these ids [len(ids), dim] (read from the mapped file)."""
        if self.n == 0:
            return np.zeros((0, self.dim), np.float32)
        if self._map is None:
            self._map = np.memmap(self.path, np.float32, "r", shape=(self.n, self.dim))
            self._map._mmap.madvise(mmap.MADV_RANDOM)  # no read-ahead: candidates are scattered
        ids = np.asarray(ids, dtype=np.int64)
        out = np.empty((len(ids), self.dim), np.float32)
        for s in range(0, len(ids), MAPPED_ROWS_MAX):  # a slice at a time, so few pages are mapped at once
            out[s : s + MAPPED_ROWS_MAX] = self._map[ids[s : s + MAPPED_ROWS_MAX]]
            self._release(min(MAPPED_ROWS_MAX, len(ids) - s))
        return out

    def rerank(self, queries: np.ndarray, candidates: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Top-k of each query's candidate ids [Q, K'] by exact inner product (-1: no candidate)."""
        q, cand = np.asarray(queries, np.float32), np.asarray(candidates, np.int64)
        k = min(k, cand.shape[1])
        scores = np.empty((len(q), k), np.float32)
        ids = np.empty((len(q), k), np.int64)
        for s in range(0, len(q), RERANK_QUERIES):
            c = cand[s : s + RERANK_QUERIES]
            valid = c >= 0
            uniq, inv = np.unique(np.where(valid, c, 0), return_inverse=True)  # sorted reads, each row once
            vecs = self.rows(uniq)[inv.reshape(c.shape)]  # [q, K', D]
            sims = np.matmul(vecs, q[s : s + RERANK_QUERIES, :, None])[..., 0]
            sims[~valid] = -np.inf
            top = np.argsort(-sims, axis=1, kind="stable")[:, :k]
            scores[s : s + len(c)] = np.take_along_axis(sims, top, 1)
            ids[s : s + len(c)] = np.where(np.take_along_axis(valid, top, 1), np.take_along_axis(c, top, 1), -1)
        return scores, ids

    def _release(self, n_rows: int) -> None:
        """Every MAPPED_ROWS_MAX rows read, unmap the pages: they stay in the OS page cache (a re-read is a
        minor fault), but the process's resident set holds no more than that many rows' pages."""
        self._mapped_rows += n_rows
        if self._map is not None and self._mapped_rows >= MAPPED_ROWS_MAX:
            self._map._mmap.madvise(mmap.MADV_DONTNEED)
            self._mapped_rows = 0
