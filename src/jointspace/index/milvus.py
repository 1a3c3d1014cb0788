"""The Milvus backend: the same operations as IndexStore (FAISS + SQLite), over a Milvus collection
(Milvus Lite in this process, or a server). Every item column is a scalar field of the collection;
the index folder keeps meta.json (backend, uri, collection; never a token) and the previews.

A build writes into a staging collection (`<name>__build_<time>_<pid>`) and, once it is complete,
points the alias `<name>` (which every reader and writer uses) at it: a killed build leaves only a
staging collection that no alias names, dropped by the next build. `add` and `delete` change the live
collection as they go (Milvus has no transactions): a killed `add` leaves part of its items in."""

from __future__ import annotations

import json
import os
import threading
import time
from collections import Counter
from pathlib import Path

import numpy as np

from jointspace.index.filters import (
    COLUMNS,
    FingerprintError,
    IndexStoreError,
    delete_conditions,
    milvus_literal,
    milvus_where,
    parse_where,
)
from jointspace.index.folder import FORMAT, META_FILE, PREVIEWS_FILE, read_meta
from jointspace.index.milvus_conn import (
    BUILD_MARK,
    PAGE_ROWS,
    TOPK_MAX,
    alias_target,
    client,
    count,
    create_index_once,
    drop_leftovers,
    index_spec,
    is_lite,
    item_row,
    iter_rows,
    new_schema,
    public_uri,
)
from jointspace.index.previews import IN_CHUNK, Previews
from jointspace.index.reading import process_memory
from jointspace.outputs import staging as staging_folder

PROPS = ("format", "fingerprint", "dim", "run_dir")  # kept with the collection, as `jointspace.<name>`
STATS_TTL_S = 10.0  # `stats` reads every row's key, modality and split: the service reuses it this long


class MilvusStore:
    backend = "milvus"

    def __init__(self, cli, meta: dict, previews: Previews, path: Path | None = None, staging: str | None = None):
        self.client, self.meta, self.previews, self.path, self.staging = cli, meta, previews, path, staging
        self.collection: str = meta["collection"]  # the alias
        self._pairs: set | None = set() if staging else None  # a build's (key, modality) pairs so far
        self._lock = threading.RLock()
        self._stats: tuple[float, dict] | None = None

    @property
    def target(self) -> str:
        """The collection written and read: the staging one during a build, else the alias."""
        return self.staging or self.collection

    @property
    def dim(self) -> int:
        return int(self.meta["dim"])

    @property
    def n_items(self) -> int:
        return count(self.client, self.target)

    needs_training = False

    # ---- making, opening, saving ----
    @classmethod
    def create(cls, dim: int, meta: dict, uri: str, collection: str, scratch_dir: Path,
               token: str | None = None, factory: str = "auto") -> MilvusStore:
        """An empty staging collection for a build; `save` makes it the one `collection` names."""
        cli = client(uri, token)
        drop_leftovers(cli, collection)
        name = f"{collection}{BUILD_MARK}{time.strftime('%Y%m%d%H%M%S')}_{os.getpid()}"
        now = time.strftime("%Y-%m-%dT%H:%M:%S")
        full = {"format": FORMAT, "backend": "milvus", "uri": uri, "collection": collection, "dim": int(dim),
                "metric": "inner_product", "factory": factory, "search": {}, "next_id": 0, "n_tombstones": 0,
                "created": now, "updated": now, **meta}
        props = {f"jointspace.{p}": str(full.get(p) or "") for p in PROPS}
        cli.create_collection(name, schema=new_schema(cli, dim), consistency_level="Strong", properties=props)
        return cls(cli, full, Previews(None, scratch_dir), staging=name)

    @classmethod
    def join_build(cls, meta: dict, staging: str, token: str | None = None) -> MilvusStore:
        """Another process's staging collection on a server, to insert rows into (a distributed build's
        other ranks); its previews are not kept here."""
        store = cls(client(meta["uri"], token), dict(meta), Previews(None, Path.cwd()), staging=staging)
        if staging not in store.client.list_collections():
            raise IndexStoreError(f"Milvus at {public_uri(meta['uri'])} has no collection {staging!r}")
        return store

    @classmethod
    def open(cls, path: str | Path, token: str | None = None) -> MilvusStore:
        path = Path(path)
        meta = read_meta(path / META_FILE)
        if not (path / PREVIEWS_FILE).exists():
            raise IndexStoreError(f"{path / PREVIEWS_FILE}: missing; the index folder is incomplete")
        cli = client(meta["uri"], token)
        name = meta["collection"]
        if alias_target(cli, name) is None:
            raise IndexStoreError(f"{path}: Milvus at {public_uri(meta['uri'])} has no collection alias {name!r}; "
                                  "was it dropped? rebuild with `jointspace index build --backend milvus`")
        if str(cli.get_load_state(name)["state"]) != "Loaded":  # a Lite file reopened: nothing is loaded
            cli.load_collection(name)
        props = cli.describe_collection(name).get("properties") or {}
        if props.get("jointspace.dim") != str(meta["dim"]):
            raise IndexStoreError(f"{path}: collection {name!r} holds vectors of dimension "
                                  f"{props.get('jointspace.dim')}, but meta.json says {meta['dim']}")
        meta["fingerprint"] = props.get("jointspace.fingerprint") or None  # the collection's word is final
        return cls(cli, meta, Previews(path / PREVIEWS_FILE, path.parent), path)

    def close(self) -> None:
        self.previews.close()

    def save(self, path: str | Path | None = None) -> Path:
        """Make a build's collection the live one (index it, load it, switch the alias) and write the folder
        (meta.json, previews) atomically; after `add` / `delete`, flush and rewrite the folder."""
        path = Path(path or self.path or "")
        if not str(path):
            raise IndexStoreError("save: no path given")
        if path.exists() and not (path / META_FILE).exists() and any(path.iterdir()):
            raise IndexStoreError(f"{path}: exists and is not a jointspace index; refusing to replace it")
        with self._lock:
            self.client.flush(self.target)
            if self.staging:
                self._index_staging()
            n = self.n_items
            self.meta.update(n_items=n, n_vectors=n, updated=time.strftime("%Y-%m-%dT%H:%M:%S"))
            with staging_folder(path, before_swap=self._publish if self.staging else None) as tmp:
                self.previews.save_into(tmp)
                (tmp / META_FILE).write_text(json.dumps(self.meta, indent=2))
        self.path, self._stats = path, None
        return path

    def _index_staging(self) -> None:
        kind, build, search = index_spec(self.meta["factory"], self.n_items)
        params = self.client.prepare_index_params()
        params.add_index("vector", index_type=kind, metric_type="IP", params=build)
        create_index_once(self.client, self.staging, params, kind)
        self.client.load_collection(self.staging)
        if self.meta["factory"] == "auto":
            self.meta["factory"] = "Flat" if kind == "FLAT" else f"IVF{build['nlist']},Flat"
        self.meta.update(milvus_index={"type": kind, **build}, search={**search, **self.meta.get("search", {})})

    def _publish(self) -> None:
        """Point the alias at the finished staging collection; drop the build it pointed at before."""
        old = alias_target(self.client, self.collection)
        if old is None:
            if self.collection in self.client.list_collections():
                raise IndexStoreError(f"collection {self.collection!r} exists and is not an alias jointspace "
                                      "made; choose another --collection")
            self.client.create_alias(self.staging, self.collection)
        else:
            self.client.alter_alias(self.staging, self.collection)
            if old.startswith(self.collection + BUILD_MARK):
                self.client.drop_collection(old)
        self.staging, self._pairs = None, None

    def check_model(self, fingerprint: str, run_dir: str | Path | None = None) -> None:
        """Refuse a model whose fingerprint differs from the one stored with the collection."""
        built = self.meta.get("fingerprint")
        if built and built != fingerprint:
            raise FingerprintError(
                f"{self.path or 'index'}: built with model {built[:12]} (run {self.meta.get('run_dir')}), but "
                f"{run_dir or 'the given run'} is model {fingerprint[:12]}; embeddings of different models "
                "are not comparable: query with the original run or rebuild the index")

    # ---- items ----
    def add(self, vectors: np.ndarray, items: list[dict], previews: dict[str, bytes] | None = None,
            replace: bool = False) -> np.ndarray:
        """Insert vectors [N, D] with one item dict each; a (key, modality) already there is refused, or
        with `replace` deleted first. Returns the new ids."""
        vectors = np.ascontiguousarray(vectors, dtype=np.float32)
        if vectors.ndim != 2 or vectors.shape[1] != self.dim or len(vectors) != len(items):
            raise IndexStoreError(f"add: expected vectors [{len(items)}, {self.dim}], got {list(vectors.shape)}")
        pairs = [(str(it["key"]), str(it["modality"])) for it in items]
        if len(set(pairs)) != len(pairs):
            raise IndexStoreError("add: the same (key, modality) appears twice in one batch")
        rows = [item_row(v, it) for v, it in zip(vectors, items)]
        with self._lock:
            taken = self._taken(pairs)
            if taken and not replace:
                shown = ", ".join(f"{k}/{m}" for k, m in list(taken)[:5])
                raise IndexStoreError(f"add: {len(taken)} items already in the index ({shown}); use replace")
            if taken:
                self.client.delete(self.target, ids=[i for ids in taken.values() for i in ids])
            ids = []
            for s in range(0, len(rows), PAGE_ROWS):
                ids += list(self.client.insert(self.target, rows[s : s + PAGE_ROWS])["ids"])
            if self._pairs is not None:
                self._pairs.update(pairs)
            self.previews.put(previews)
            self._stats = None
        return np.asarray(ids, dtype=np.int64)

    def _taken(self, pairs: list[tuple[str, str]]) -> dict[tuple[str, str], list[int]]:
        if self._pairs is not None:  # a build's own collection: what it added so far
            return {p: [] for p in pairs if p in self._pairs}
        wanted, keys, out = set(pairs), sorted({k for k, _ in pairs}), {}
        for s in range(0, len(keys), IN_CHUNK):
            for r in iter_rows(self.client, self.target, milvus_where({"key": keys[s : s + IN_CHUNK]}),
                               ["id", "key", "modality"]):
                if (r["key"], r["modality"]) in wanted:
                    out.setdefault((r["key"], r["modality"]), []).append(int(r["id"]))
        return out

    def delete(self, keys: list[str] | None = None, where: dict | list[str] | None = None) -> int:
        """Delete items by sample key (every modality) and/or by filter; returns how many went."""
        conds = delete_conditions(keys, where)
        key_lists = [conds["key"][s : s + IN_CHUNK] for s in range(0, len(conds["key"]), IN_CHUNK)] \
            if "key" in conds else [None]
        gone: set[str] = set()
        n = 0
        with self._lock:
            for part in key_lists:
                expr = milvus_where({**conds, **({"key": part} if part else {})})
                rows = list(iter_rows(self.client, self.target, expr, ["id", "key"]))
                if rows:
                    self.client.delete(self.target, ids=[int(r["id"]) for r in rows])
                n += len(rows)
                gone.update(r["key"] for r in rows)
            left = {r["key"] for r in self._rows_of_keys(sorted(gone), ["key"])}
            self.previews.drop(gone - left)
            self._stats = None
        return n

    def _rows_of_keys(self, keys: list[str], fields: list[str]):
        for s in range(0, len(keys), IN_CHUNK):
            yield from iter_rows(self.client, self.target, milvus_where({"key": keys[s : s + IN_CHUNK]}), fields)

    def get(self, key: str) -> dict | None:
        """One sample: its metadata, indexed modalities and whether it has a preview."""
        rows = sorted(self.client.query(self.target, filter=f"key == {milvus_literal(str(key))}",
                                        output_fields=list(COLUMNS)), key=lambda r: r["modality"])
        if not rows:
            return None
        item = {c: rows[0].get(c) for c in COLUMNS if c != "modality"}
        return {**item, "modalities": [r["modality"] for r in rows], "has_thumbnail": bool(self.previews.having([key]))}

    def preview(self, key: str) -> bytes | None:
        return self.previews.get(key)

    # ---- reading ----
    def _search(self, queries: np.ndarray, k: int, where, fields: list[str], overrides: dict) -> list:
        q = np.ascontiguousarray(np.atleast_2d(queries), dtype=np.float32)
        if q.ndim != 2 or q.shape[1] != self.dim:
            raise IndexStoreError(f"search: queries must be [Q, {self.dim}], got {list(q.shape)}")
        if k < 1:
            raise IndexStoreError(f"search: k must be >= 1, got {k}")
        expr = milvus_where(parse_where(where))
        knobs = {**self.meta.get("search", {}), **{n: v for n, v in overrides.items() if v is not None}}
        params = {"nprobe": int(knobs["nprobe"])} if "nprobe" in knobs and "nlist" in self.meta.get(
            "milvus_index", {}) else ({"ef": max(int(knobs["ef"]), k)} if "ef" in knobs else {})
        return self.client.search(self.target, data=q.tolist(), limit=min(k, TOPK_MAX), filter=expr,
                                  output_fields=fields, search_params={"metric_type": "IP", "params": params})

    def nearest(self, queries: np.ndarray, k: int = 10, where: dict | list[str] | None = None,
                **search_params) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids) [Q, k'] of the nearest vectors by inner product (-1: none)."""
        res = self._search(queries, k, where, [], search_params)
        width = max((len(h) for h in res), default=0)
        scores, ids = np.full((len(res), width), -np.inf, np.float32), np.full((len(res), width), -1, np.int64)
        for i, hits in enumerate(res):
            for j, h in enumerate(hits):
                scores[i, j], ids[i, j] = h["distance"], h["id"]
        return scores, ids

    def search(self, queries: np.ndarray, k: int = 10, where: dict | list[str] | None = None,
               **search_params) -> list[list[dict]]:
        """Top-k items per query [Q, D] by inner product, optionally filtered by metadata."""
        res = self._search(queries, k, where, list(COLUMNS), search_params)
        thumbs = self.previews.having(sorted({h["entity"]["key"] for hits in res for h in hits}))
        return [[{**{c: h["entity"].get(c) for c in COLUMNS}, "has_thumbnail": h["entity"]["key"] in thumbs,
                  "id": int(h["id"]), "score": float(h["distance"])} for h in hits][:k] for hits in res]

    def distinct(self, column: str) -> list:
        return sorted({r[column] for r in iter_rows(self.client, self.target, "", [column])},
                      key=lambda v: (v is None, v))

    def label_names(self, start: int = 0) -> dict[int, str | None]:
        """label -> its name, for labels >= start (as the FAISS store's MAX(label_name) per label)."""
        out: dict[int, str | None] = {}
        for r in iter_rows(self.client, self.target, f"label >= {int(start)}", ["label", "label_name"]):
            out[r["label"]] = max(filter(None, (out.get(r["label"]), r["label_name"])), default=None)
        return out

    def stats(self) -> dict:
        """Counts per modality and split, the collection, the model fingerprint (cached STATS_TTL_S)."""
        if self._stats is not None and time.monotonic() - self._stats[0] < STATS_TTL_S:
            return self._stats[1]
        per, keys = {"modality": Counter(), "split": Counter()}, set()
        for r in iter_rows(self.client, self.target, "", ["key", "modality", "split"]):
            per["modality"][r["modality"]] += 1
            per["split"][r["split"]] += 1
            keys.add(r["key"])
        n = sum(per["modality"].values())
        keep = ("dim", "factory", "search", "fingerprint", "run_dir", "created", "updated", "n_tombstones",
                "class_names", "milvus_index")
        out = {"n_items": n, "n_samples": len(keys), "n_vectors": n, "refine": None,
               **{name: dict(sorted(per[c].items(), key=lambda kv: (kv[0] is None, kv[0] or "")))
                  for c, name in (("modality", "modalities"), ("split", "splits"))},
               **{k: self.meta.get(k) for k in keep}, "backend": "milvus", "uri": public_uri(self.meta["uri"]),
               "collection": self.collection}
        self._stats = (time.monotonic(), out)
        return out

    def memory(self) -> dict:
        """What this process holds (Milvus Lite runs in it; a server's memory is the server's)."""
        engine = "Milvus Lite, in this process" if is_lite(self.meta["uri"]) else "the Milvus server"
        return {"previews_bytes": self.previews.nbytes(), "engine": engine, **process_memory()}

