"""Reaching Milvus for the Milvus backend: the URI (a Milvus Lite file, or a server), the client (one per
URI and process), the collection's schema and vector index, and reading rows in pages.

pymilvus is an optional extra (`jointspace[milvus]`), imported only when a Milvus index is used."""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jointspace.errors import require
from jointspace.index.filters import COLUMNS, IndexStoreError

TOKEN_ENV = "JOINTSPACE_MILVUS_TOKEN"  # a server's token (`user:password` or an API key); never written down
SERVER_SCHEMES = ("http://", "https://", "tcp://", "grpc://", "unix:")
STR_MAX = 65_535  # the longest VARCHAR Milvus stores (bytes, UTF-8)
SHORT_MAX = 1_024  # modality and split names
PAGE_ROWS = 10_000  # rows per page when reading many rows, and per insert request
TOPK_MAX = 16_384  # Milvus answers at most this many hits per query
BUILD_MARK = "__build_"  # a build's staging collection: <alias>__build_<time>_<pid>
EXACT_MAX = 50_000  # as build.py's FAISS choice: exact below this many vectors, IVF above
_clients: dict[tuple[str, str], object] = {}
_clients_lock = threading.Lock()


def pymilvus():
    mod = require("milvus", "pymilvus", "--backend milvus")
    # a paged read over Milvus Lite asks its in-process server for a timestamp it does not serve, and both
    # sides log it (with a traceback) before the client takes its own clock: nothing to act on
    logging.getLogger("pymilvus.client.iterator.query_iterator").setLevel(logging.ERROR)
    logging.getLogger("grpc._server").setLevel(logging.CRITICAL)
    logging.getLogger("pymilvus.decorators").addFilter(_RETRIED_INDEX)  # create_index_once handles it
    return mod


class _RetriedIndexFilter(logging.Filter):
    """Drops pymilvus's error log (with a traceback) of a retried create_index finding its own index."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "index already exists" not in record.getMessage()


_RETRIED_INDEX = _RetriedIndexFilter()


def is_lite(uri: str) -> bool:
    """Whether `uri` is a Milvus Lite file (the engine in this process) rather than a server."""
    return not uri.startswith(SERVER_SCHEMES)


def resolve_uri(uri: str | None, out: Path) -> str:
    """The URI to record for an index folder `out`: a server's as given; a Lite file's absolute path (by
    default `<out>.milvus.db` beside the folder; never inside it, since a save replaces the folder)."""
    if uri and not is_lite(uri):
        return uri
    path = Path(uri) if uri else out.parent / f"{out.name}.milvus.db"
    if path.suffix != ".db":
        raise IndexStoreError(f"--uri {uri}: a Milvus Lite file must end in .db (or give http://host:19530)")
    path = path.resolve()
    if out.resolve() in path.parents:
        raise IndexStoreError(f"--uri {uri}: the Milvus Lite file cannot be inside the index folder {out} "
                              "(a save replaces that folder); put it beside it")
    return str(path)


def collection_name(out: Path) -> str:
    """A collection (alias) name from the index folder's name: letters, digits and underscores."""
    name = re.sub(r"[^A-Za-z0-9_]", "_", out.resolve().name)
    return name if re.match(r"[A-Za-z_]", name) else f"js_{name}"


def check_collection(name: str) -> str:
    if not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]{0,200}", name):
        raise IndexStoreError(f"--collection {name!r}: use letters, digits and underscores, not starting with a digit")
    return name


def client(uri: str, token: str | None = None):
    """This process's client for `uri` (a Lite file admits one process at a time: a second one, e.g. a
    running `serve`, makes opening it fail, said so here)."""
    token = token if token is not None else os.environ.get(TOKEN_ENV, "")
    with _clients_lock:
        if (uri, token) not in _clients:
            mod = pymilvus()
            try:
                _clients[(uri, token)] = mod.MilvusClient(uri=uri, token=token)
            except mod.exceptions.MilvusException as err:
                busy = " (a Milvus Lite file is open in one process at a time: is a `serve` or another " \
                       "command using it?)" if is_lite(uri) else ""
                raise IndexStoreError(f"{uri}: cannot open Milvus: {err.message}{busy}") from None
        return _clients[(uri, token)]


def close_clients(uri: str | None = None) -> None:
    """Close this process's clients (of `uri`, or all): a Lite file is then free for another process."""
    with _clients_lock:
        for key in [k for k in _clients if uri is None or k[0] == uri]:
            _clients.pop(key).close()
            if is_lite(key[0]):  # closing the client leaves Lite's in-process server holding the file
                from milvus_lite import server_manager_instance

                server_manager_instance.release_server(key[0])


def new_schema(cli, dim: int):
    """Every item column a scalar field (as the FAISS backend's SQLite table), the vector, an auto id."""
    dt = pymilvus().DataType
    schema = cli.create_schema(auto_id=True, enable_dynamic_field=False)
    schema.add_field("id", dt.INT64, is_primary=True)
    schema.add_field("vector", dt.FLOAT_VECTOR, dim=int(dim))
    schema.add_field("key", dt.VARCHAR, max_length=STR_MAX)
    schema.add_field("modality", dt.VARCHAR, max_length=SHORT_MAX)
    schema.add_field("label", dt.INT64, nullable=True)
    for name, size in (("label_name", STR_MAX), ("caption", STR_MAX), ("source", STR_MAX), ("split", SHORT_MAX)):
        schema.add_field(name, dt.VARCHAR, max_length=size, nullable=True)
    return schema


HNSW_EF_CONSTRUCTION = 40  # what FAISS's index_factory("HNSW<M>") builds with


def index_spec(factory: str, n_vectors: int) -> tuple[str, dict, dict]:
    """(Milvus index type, build params, search params) for a FAISS-style factory string: `Flat`,
    `IVF{nlist},Flat`, `HNSW{M}`, or `auto` (exact below EXACT_MAX vectors, IVF above). A factory string
    means the same index on both backends: HNSW{M} builds with FAISS's efConstruction (40) and searches
    with the ef the FAISS backend stores (128)."""
    if factory == "auto":
        factory = "Flat" if n_vectors < EXACT_MAX else f"IVF{2 ** round(math.log2(4 * math.sqrt(n_vectors)))},Flat"
    if factory.upper() == "FLAT":
        return "FLAT", {}, {}
    m = re.fullmatch(r"IVF(\d+),Flat", factory, re.IGNORECASE)
    if m:
        nlist = int(m.group(1))
        return "IVF_FLAT", {"nlist": nlist}, {"nprobe": max(8, round(nlist / 256))}
    m = re.fullmatch(r"HNSW(\d+)", factory, re.IGNORECASE)
    if m:
        return "HNSW", {"M": int(m.group(1)), "efConstruction": HNSW_EF_CONSTRUCTION}, {"ef": 128}
    raise IndexStoreError(f"factory {factory!r}: the Milvus backend takes auto, Flat, IVF<nlist>,Flat or HNSW<M>")


def create_index_once(cli, collection: str, params, kind: str) -> None:
    """Index `collection`'s vectors. A long build (HNSW over 1M vectors in Milvus Lite: minutes) can outlive
    the client's connection, and pymilvus then sends the call again, which finds the index the first call
    made: that index, if of the same type, is the one asked for."""
    try:
        cli.create_index(collection, params)
    except pymilvus().exceptions.MilvusException as err:
        if "already exists" not in str(err.message):
            raise
        have = cli.describe_index(collection, "vector")
        if str(have.get("index_type", "")).upper() != kind.upper():
            raise IndexStoreError(f"collection {collection!r} already has a {have.get('index_type')} index, "
                                  f"not the {kind} asked for") from None


def iter_rows(cli, name: str, expr: str, fields: list[str]) -> Iterator[dict]:
    """Every row matching `expr` ("" = all), a page at a time."""
    it = cli.query_iterator(name, batch_size=PAGE_ROWS, filter=expr, output_fields=fields)
    try:
        while True:
            page = it.next()
            if not page:
                return
            yield from page
    finally:
        it.close()


def count(cli, name: str, expr: str = "") -> int:
    return int(cli.query(name, filter=expr, output_fields=["count(*)"])[0]["count(*)"])


def item_row(vector: np.ndarray, item: dict) -> dict:
    row = {"vector": vector.tolist()}
    for c in COLUMNS:
        v = item.get(c)
        if c == "label":
            row[c] = None if v is None else int(v)
            continue
        row[c] = None if v is None else str(v)
        if row[c] is not None and len(row[c].encode("utf-8", "surrogatepass")) > STR_MAX:
            raise IndexStoreError(f"add: item {str(item.get('key'))[:80]!r}: {c} is longer than Milvus's "
                                  f"{STR_MAX} bytes")
    return row


def alias_target(cli, alias: str) -> str | None:
    """The collection `alias` names, or None when there is no such alias."""
    if alias not in (cli.list_aliases().get("aliases") or []):
        return None
    return cli.describe_alias(alias)["collection_name"]


def drop_leftovers(cli, collection: str) -> list[str]:
    """Drop staging collections of `collection` that no alias names (builds killed before switching)."""
    live = alias_target(cli, collection)
    gone = [c for c in cli.list_collections() if c.startswith(collection + BUILD_MARK) and c != live]
    for c in gone:
        cli.drop_collection(c)
    return gone


def public_uri(uri: str) -> str:
    """A URI without any user:password part (for messages and /stats)."""
    return re.sub(r"//[^/@]*@", "//", uri)
