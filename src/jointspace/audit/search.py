"""Where the audit's neighbour searches run: FAISS in this process (the default), or Milvus (a Milvus Lite
file, or a server or cluster by URI), the index backends of `jointspace index`. Either gives `knn` an
index with `ntotal` and `search(queries, k) -> (similarities, rows)`; a Milvus one is a collection of
this audit's own, dropped when the audit ends."""

from __future__ import annotations

import os
import tempfile
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Self

import numpy as np

from jointspace.audit.neighbours import MIN_NPROBE, make_index
from jointspace.errors import UsageError
from jointspace.index.filters import IndexStoreError
from jointspace.index.milvus_conn import (
    PAGE_ROWS,
    TOPK_MAX,
    client,
    close_clients,
    create_index_once,
    index_spec,
    is_lite,
    public_uri,
    pymilvus,
)

BACKENDS = ("faiss", "milvus")
AUDIT_MARK = "jointspace_audit_"  # this audit's collections: jointspace_audit_<pid>_<uuid>


MESSAGE_BYTES = 16 << 20  # vectors per insert or search request: about this many bytes (gRPC limits messages)


@contextmanager
def _milvus_errors(uri: str) -> Iterator[None]:
    """The Milvus client's errors inside, as one-line IndexStoreErrors naming the server."""
    mod = pymilvus()
    try:
        yield
    except mod.exceptions.MilvusException as err:
        raise IndexStoreError(f"Milvus at {public_uri(uri)}: {err.message}") from None


def _rows_per_message(dim: int) -> int:
    return max(1, min(PAGE_ROWS, MESSAGE_BYTES // (4 * max(dim, 1))))


class MilvusNeighbours:
    """A collection of vectors (row number = primary key) searched by inner product."""

    def __init__(self, cli, uri: str, name: str, n: int, params: dict):
        self.cli, self.uri, self.name, self.ntotal, self.params = cli, uri, name, n, params

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Similarities [Q, k] (descending; -inf where fewer) and rows [Q, k] (-1 where fewer)."""
        queries = np.asarray(queries, dtype=np.float32)
        sims = np.full((len(queries), k), -np.inf, dtype=np.float32)
        rows = np.full((len(queries), k), -1, dtype=np.int64)
        step = _rows_per_message(queries.shape[1])
        for start in range(0, len(queries), step):
            with _milvus_errors(self.uri):
                hits = self.cli.search(self.name, data=queries[start:start + step].tolist(), limit=min(k, TOPK_MAX),
                                       search_params={"metric_type": "IP", "params": self.params})
            for i, found in enumerate(hits, start):
                for j, h in enumerate(found[:k]):
                    sims[i, j], rows[i, j] = h["distance"], h["id"]
        return sims, rows


class NeighbourSearch:
    """Makes the audit's indexes on one backend; `with` it: a Milvus one drops its collections at the end
    (and, without a --uri, its temporary Milvus Lite file)."""

    def __init__(self, backend: str = "faiss", uri: str | None = None, token: str | None = None):
        if backend not in BACKENDS:
            raise UsageError(f"--backend {backend!r}: choose from {', '.join(BACKENDS)}")
        if uri and backend != "milvus":
            raise UsageError("--uri names a Milvus; give it with --backend milvus")
        self.backend, self.uri, self.token = backend, uri, token
        self._made: list[str] = []
        self._scratch: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> Self:
        if self.backend == "milvus":
            pymilvus()  # a missing extra is one line before any work
            if self.uri is None:
                self._scratch = tempfile.TemporaryDirectory(prefix="jointspace-audit-")
                self.uri = str(Path(self._scratch.name) / "audit.db")
            elif is_lite(self.uri) and not self.uri.endswith(".db"):
                raise UsageError(f"--uri {self.uri}: a Milvus Lite file must end in .db (or give http://host:19530)")
        return self

    def __exit__(self, *exc) -> None:
        """Drop every collection this audit made (each on its own: one that fails does not keep the rest),
        then remove a temporary Lite file; an error on the way in is not hidden by one here."""
        if self.backend != "milvus":
            return
        failed = []
        try:
            for name in self._made:
                try:
                    client(self.uri, self.token).drop_collection(name)
                except Exception as err:  # noqa: BLE001 - any failure: said below, the others still dropped
                    failed.append(f"{name} ({err})")
        finally:
            self._made = []
            if self._scratch is not None:
                try:
                    close_clients(self.uri)
                finally:
                    self._scratch.cleanup()
                    self._scratch, self.uri = None, None
        if failed and exc[0] is None:
            raise IndexStoreError(f"could not drop the audit's Milvus collections {', '.join(failed)}")

    def index(self, vectors: np.ndarray, seed: int = 0):
        """An index over `vectors` [N, D] (L2-normalised, float32) for `neighbours.knn`."""
        if self.backend == "faiss":
            return make_index(vectors, seed)
        if self.uri is None:
            raise UsageError("NeighbourSearch: use it in a `with` block")
        with _milvus_errors(self.uri):
            return self._milvus(np.ascontiguousarray(vectors, dtype=np.float32))

    def _milvus(self, vectors: np.ndarray) -> MilvusNeighbours:
        """The vectors into a new collection of this audit's, indexed as `index build --factory auto` would
        (exact below 50k vectors, IVF above, probing at least MIN_NPROBE lists, as the FAISS route does)."""
        mod, cli = pymilvus(), client(self.uri, self.token)
        name = f"{AUDIT_MARK}{os.getpid()}_{uuid.uuid4().hex}"
        schema = cli.create_schema(auto_id=False)
        schema.add_field("id", mod.DataType.INT64, is_primary=True)
        schema.add_field("vector", mod.DataType.FLOAT_VECTOR, dim=int(vectors.shape[1]))
        cli.create_collection(name, schema=schema, consistency_level="Strong")
        self._made.append(name)
        step = _rows_per_message(vectors.shape[1])
        for start in range(0, len(vectors), step):
            block = vectors[start:start + step]
            cli.insert(name, [{"id": start + i, "vector": v} for i, v in enumerate(block.tolist())])
        cli.flush(name)
        kind, build, search = index_spec("auto", len(vectors))
        params = cli.prepare_index_params()
        params.add_index("vector", index_type=kind, metric_type="IP", params=build)
        create_index_once(cli, name, params, kind)
        cli.load_collection(name)
        if "nprobe" in search:
            search = {"nprobe": max(MIN_NPROBE, search["nprobe"])}
        return MilvusNeighbours(cli, self.uri, name, len(vectors), search)
