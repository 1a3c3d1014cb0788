"""The one place that picks an index's backend: FAISS (the default: index.faiss + items.sqlite in the
folder) or Milvus (meta.json names the URI and collection). Commands and the service open an index
folder with `open_store` and use the same operations on either."""

from __future__ import annotations

from pathlib import Path

from jointspace.errors import UsageError
from jointspace.index.folder import META_FILE, read_meta
from jointspace.index.milvus import MilvusStore
from jointspace.index.store import IndexStore
from jointspace.swap import recover_interrupted

BACKENDS = ("faiss", "milvus")
Store = IndexStore | MilvusStore


def open_store(path: str | Path, recover: bool = False) -> Store:
    """Open an index folder with its backend (meta.json's `backend`; none recorded: FAISS). `recover`
    (commands, not a serving process): a folder a killed write left missing is restored first."""
    path = Path(path)
    if recover:
        recover_interrupted(path)
    if (path / META_FILE).exists() and read_meta(path / META_FILE).get("backend", "faiss") == "milvus":
        return MilvusStore.open(path)
    return IndexStore.open(path)


def check_backend(backend: str, uri: str | None, token: str | None, collection: str | None) -> None:
    """Refuse Milvus options without the Milvus backend, and an unknown backend."""
    if backend not in BACKENDS:
        raise UsageError(f"--backend {backend!r}: expected one of {', '.join(BACKENDS)}")
    given = [flag for flag, v in (("--uri", uri), ("--token", token), ("--collection", collection)) if v]
    if backend == "faiss" and given:
        raise UsageError(f"{', '.join(given)}: only with --backend milvus")
    if uri and "@" in uri.split("//", 1)[-1].split("/", 1)[0]:
        raise UsageError("--uri: give credentials with --token (or JOINTSPACE_MILVUS_TOKEN), not in the URI, "
                         "which is written to meta.json")
