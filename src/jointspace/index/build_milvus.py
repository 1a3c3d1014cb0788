"""The Milvus side of an index build: the staging collection (made by rank 0 of a torchrun job, joined by
the other ranks when it is on a server) and the chunks put into it."""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Callable, Iterable
from pathlib import Path

from jointspace.engine.distributed import DistInfo
from jointspace.index.build_parts import from_main, together
from jointspace.index.milvus import MilvusStore
from jointspace.index.milvus_conn import check_collection, collection_name, is_lite, resolve_uri

SLOW_MILVUS_BUILD_ENV = "JOINTSPACE_TEST_SLOW_MILVUS_BUILD_S"  # tests only: a pause after each chunk is staged


def milvus_staging(out: Path, dim: int, meta: dict, factory: str, nprobe: int | None, uri: str | None,
                   token: str | None, collection: str | None) -> MilvusStore:
    """A Milvus staging collection for a build into `out` (`save` makes it the live one)."""
    store = MilvusStore.create(dim, meta, resolve_uri(uri, out), check_collection(collection or collection_name(out)),
                               out.resolve().parent, token, factory)
    if nprobe is not None:
        store.meta["search"] = {"nprobe": int(nprobe)}
    return store


def rank_staging(info: DistInfo, create: Callable[[], MilvusStore], token: str | None) -> MilvusStore | None:
    """Rank 0: the staging collection `create` makes. The other ranks: the same collection when it is on a
    server (they insert into it), else None (a Lite file is rank 0's alone: their rows go to rank 0)."""
    made: list[MilvusStore] = []

    def make() -> tuple[str, dict]:
        made.append(create())
        return made[0].staging, made[0].meta

    name, meta = from_main(info, make)
    joins = not info.is_main and not is_lite(meta["uri"])
    try:
        joined = together(info, (lambda: MilvusStore.join_build(meta, name, token)) if joins else None)
    except BaseException:
        if made:
            made[0].client.drop_collection(name)
        raise
    return made[0] if made else joined


def fill_milvus(store: MilvusStore, chunks: Iterable) -> MilvusStore:
    """Every chunk into the staging collection (a chunk without rows: previews of rows that a rank
    inserted itself); on an error the collection goes."""
    try:
        for vectors, items, previews in chunks:
            if not items:
                store.previews.put(previews)
                continue
            store.add(vectors, items, previews)
            if os.environ.get(SLOW_MILVUS_BUILD_ENV):  # kill tests: a window with rows in, the alias not switched
                print(f"staged {len(items)} items", file=sys.stderr, flush=True)
                time.sleep(float(os.environ[SLOW_MILVUS_BUILD_ENV]))
    except BaseException:
        store.client.drop_collection(store.staging)
        store.close()
        raise
    return store
