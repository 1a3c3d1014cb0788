"""FastAPI search service over an index folder: POST /search, items, thumbnails, health, stats, web page."""

from __future__ import annotations

import hmac
import threading
import time
from collections import Counter
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Annotated

import numpy as np
from fastapi import Depends, FastAPI, HTTPException, Request
from fastapi.responses import FileResponse, JSONResponse, Response
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from fastapi.staticfiles import StaticFiles
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from jointspace.audit.folder import flags_by_key
from jointspace.index.backend import Store, open_store
from jointspace.index.query import Encoder, QueryError, parse_vector
from jointspace.index.store import META_FILE, IndexStoreError
from jointspace.run_dir import WEIGHTS, RunDir
from jointspace.serve.launch import check_settings
from jointspace.serve.middleware import UNAUTHORIZED, DocsGuard, StatusCounter
from jointspace.serve.parsing import BadRequest, Query, SearchRequest, parse_search
from jointspace.serve.schema import JSON_DEFS, JSON_SCHEMA, MULTIPART, MULTIPART_SCHEMA, contract

STATIC = Path(str(resources.files("jointspace") / "serve" / "static"))
BEARER = HTTPBearer(auto_error=False, description="needed when the server was started with a token")
DOCS_PATHS = ("/docs", "/docs/oauth2-redirect", "/redoc")  # with the schema: need the token when one is set


class Hit(BaseModel):
    """One result: an item (sample x modality) and its inner-product score."""

    key: str
    modality: str
    score: float
    label: int | None = None
    label_name: str | None = None
    caption: str | None = None
    source: str | None = None
    split: str | None = None
    has_thumbnail: bool = False
    audit: list[dict[str, str]] = []  # the findings of the run's last `jointspace audit` about this sample


class Result(BaseModel):
    query: str
    hits: list[Hit]


class SearchOut(BaseModel):
    results: list[Result]
    took_ms: float


def _fastapi(**kwargs) -> FastAPI:
    """FastAPI whose /docs and /redoc load their assets from this server when fastapi-offline is installed."""
    try:
        from fastapi_offline import FastAPIOffline
    except ImportError:  # /docs then loads Swagger UI from a CDN; /openapi.json works either way
        return FastAPI(**kwargs)
    return FastAPIOffline(**kwargs)


class LiveStore:
    """The index folder as the server sees it: reopened when `index add` / `index delete` (or a rebuild)
    has swapped a new version in, checked at most every `every_s` seconds. A version that fails to open
    or was built with another model is not taken; the server keeps answering from the one it has."""

    def __init__(self, path: str | Path, every_s: float = 1.0):
        self.path, self.every_s = Path(path), every_s
        self.store = open_store(self.path)
        self.version, self.checked = self._version(), time.monotonic()
        self.check_model: tuple[str, Path] | None = None
        self.reloads, self.reload_error = 0, None
        self._lock = threading.Lock()

    def _version(self) -> tuple[int, int] | None:
        try:
            st = (self.path / META_FILE).stat()
        except OSError:  # mid-swap: the folder is being replaced
            return None
        return st.st_ino, st.st_mtime_ns

    def get(self) -> Store:
        """The current store, reopened first if the folder changed since it was opened."""
        if time.monotonic() - self.checked < self.every_s:
            return self.store
        with self._lock:
            self.checked = time.monotonic()
            version = self._version()
            if version is None or version == self.version:
                return self.store
            try:
                fresh = open_store(self.path)
                if self.check_model:
                    fresh.check_model(*self.check_model)
            except (IndexStoreError, OSError) as err:
                self.reload_error = f"{type(err).__name__}: {err}"
                return self.store  # retried when the folder changes again
            self.store, self.version, self.reload_error = fresh, version, None
            self.reloads += 1
            return self.store


@dataclass
class Service:
    """What the routes share: the live index, the model (None: vector queries only), limits and counters."""

    live: LiveStore
    encoder: Encoder | None
    model_note: str | None
    token: str | None
    max_upload_bytes: int
    max_k: int
    max_batch: int
    counts: Counter = field(default_factory=Counter)
    started: float = field(default_factory=time.time)
    lock: threading.Lock = field(default_factory=threading.Lock)
    flags: dict[str, list[dict]] = field(default_factory=dict)  # sample key -> its audit findings

    def auth(self, creds: HTTPAuthorizationCredentials | None) -> None:
        if self.token and (creds is None or not hmac.compare_digest(creds.credentials.encode(), self.token.encode())):
            raise HTTPException(401, UNAUTHORIZED, headers={"WWW-Authenticate": "Bearer"})

    def embed(self, q: Query, store: Store) -> np.ndarray:
        if q.vector is not None:
            words = self.encoder.modality_words(captions=True) if self.encoder else []
            if q.modality is not None and q.modality not in words:  # the schema's enum: a text modality or null
                raise QueryError(f"modality {q.modality!r} is not a text modality of this model "
                                 f"(known: {', '.join(words) or 'none'}); a vector query needs none")
            return parse_vector(q.vector, store.dim)
        if self.encoder is None:
            raise QueryError(f"this server has no model ({self.model_note}); send a vector")
        with self.lock:
            if q.text is not None:
                return self.encoder.encode(q.modality or self.encoder.text_modality(), [q.text])
            modality = q.modality or self.encoder.modality_for_file(q.filename, q.file)  # as `search --file` does
            return self.encoder.encode_file(modality, q.file or b"", q.filename)

    def search(self, req: SearchRequest) -> SearchOut:
        t0 = time.perf_counter()
        store = self.live.get()
        vectors = np.concatenate([self.embed(q, store) for q in req.queries])
        hits = store.search(vectors, req.k, req.where)
        results = [Result(query=q.describe(), hits=[Hit(**h, audit=self.flags.get(h["key"], [])) for h in hs])
                   for q, hs in zip(req.queries, hits)]
        return SearchOut(results=results, took_ms=round((time.perf_counter() - t0) * 1000, 3))

    def stats(self) -> dict:
        enc = self.encoder
        return {**self.live.get().stats(), "model": str(enc.run_dir) if enc else None, "model_note": self.model_note,
                "reloads": self.live.reloads, "reload_error": self.live.reload_error,
                "query_modalities": enc.kinds if enc else {},
                "limits": {"max_upload_bytes": self.max_upload_bytes, "max_k": self.max_k, "max_batch": self.max_batch},
                "auth": bool(self.token), "uptime_s": round(time.time() - self.started, 1),
                "responses": dict(self.counts)}


def audit_flags(run_dir: str | Path | None) -> dict[str, list[dict]]:
    """The findings per sample key of the run's last `jointspace audit` ({} when it has none)."""
    last = RunDir(run_dir).read_last_audit() if run_dir else None
    return flags_by_key(last["folder"]) if last and last.get("folder") else {}


def _open_model(live: LiveStore, run_dir: str | Path | None, load_model: bool,
                device: str) -> tuple[Encoder | None, str | None]:
    """The index's own run (or `run_dir`, fingerprint-checked) as an Encoder, or None and why not."""
    store = live.store
    run = Path(run_dir) if run_dir else Path(store.meta.get("run_dir") or "")
    if not load_model:
        return None, "started without a model: only vector queries work"
    if str(run) and RunDir(run).weights.exists():
        encoder = Encoder.from_run(run, device)
        store.check_model(encoder.fingerprint, run)
        live.check_model = (encoder.fingerprint, run)
        return encoder, None
    if run_dir is not None:
        raise FileNotFoundError(f"{run_dir}: no {WEIGHTS}; is it a finished jointspace run?")
    return None, f"run {store.meta.get('run_dir')!r} not found: only vector queries work"


def _search_routes(app: FastAPI, svc: Service, auth) -> None:
    @app.exception_handler(BadRequest)
    async def _bad_request(request: Request, err: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": err.detail}, status_code=err.status)

    @app.exception_handler(QueryError)
    @app.exception_handler(IndexStoreError)
    async def _bad_query(request: Request, err: ValueError) -> JSONResponse:
        return JSONResponse({"detail": str(err)}, status_code=400)

    @app.post("/search", response_model=SearchOut, dependencies=[Depends(auth)],
              responses={400: {"description": "bad query"}, 413: {"description": "upload too large"},
                         415: {"description": "not JSON or multipart"}, 422: {"description": "invalid fields"}},
              openapi_extra={"requestBody": {"required": True, "content": {
                  "application/json": {"schema": JSON_SCHEMA},
                  "multipart/form-data": {"schema": MULTIPART_SCHEMA, **MULTIPART}}}})
    async def search(request: Request) -> SearchOut:
        """Top-k items for a text, vector, uploaded file of any modality, or a batch of queries; `where` filters."""
        req = await parse_search(request, svc.max_upload_bytes, svc.max_k, svc.max_batch)
        return await run_in_threadpool(svc.search, req)


def _item_routes(app: FastAPI, svc: Service, auth) -> None:
    @app.get("/items/{key}", dependencies=[Depends(auth)], responses={404: {"description": "no such item"}})
    def item(key: str) -> dict:
        """Metadata of one sample and the modalities it is indexed under."""
        found = svc.live.get().get(key)
        if found is None:
            raise HTTPException(404, f"item {key!r}: not in the index")
        return found

    @app.get("/items/{key}/thumbnail", dependencies=[Depends(auth)], response_class=Response,
             responses={200: {"content": {"image/png": {}}}, 404: {"description": "no such item or preview"}})
    def thumbnail(key: str) -> Response:
        """PNG preview of a sample, as its kind previews it (image, range image, point cloud, frames)."""
        png = svc.live.get().preview(key)
        if png is None:
            raise HTTPException(404, f"item {key!r}: no thumbnail")
        return Response(png, media_type="image/png", headers={"Cache-Control": "max-age=3600"})


def _info_routes(app: FastAPI, svc: Service, auth) -> None:
    @app.get("/healthz")
    def healthz() -> dict:
        """Liveness: the index is loaded."""
        return {"status": "ok", "n_items": svc.live.get().n_items}

    @app.get("/stats", dependencies=[Depends(auth)])
    def stats() -> dict:
        """Index counts, model, limits and responses served by status class."""
        return svc.stats()

    @app.get("/", include_in_schema=False)
    def page() -> FileResponse:
        return FileResponse(STATIC / "index.html")


def create_app(index_dir: str | Path, run_dir: str | Path | None = None, token: str | None = None,
               max_upload_bytes: int = 8 * 1024 * 1024, max_k: int = 100, max_batch: int = 32,
               device: str = "cpu", load_model: bool = True, reload_every_s: float = 1.0) -> FastAPI:
    """The service for one index; the model is the index's own run (or `run_dir`, fingerprint-checked).
    Changes written to the index folder (`index add` / `delete`) are picked up within `reload_every_s`.
    With a token, every route but /healthz and the page needs it: the API docs and the schema too."""
    check_settings(token, max_upload_bytes, max_k, max_batch)
    live = LiveStore(index_dir, reload_every_s)
    encoder, model_note = _open_model(live, run_dir, load_model, device)
    svc = Service(live, encoder, model_note, token, max_upload_bytes, max_k, max_batch,
                  flags=audit_flags(encoder.run_dir if encoder else live.store.meta.get("run_dir")))

    def auth(creds: Annotated[HTTPAuthorizationCredentials | None, Depends(BEARER)]) -> None:
        svc.auth(creds)

    app = _fastapi(title="jointspace search", version="1",
                   description="Search a joint embedding space with text, files of any of its modalities "
                               "(images, .npy frames, range images, point clouds) or vectors.")
    if token:
        app.add_middleware(DocsGuard, token=token, paths=(app.openapi_url, *DOCS_PATHS))
    app.add_middleware(StatusCounter, counts=svc.counts)  # outermost: counts the guard's 401s too
    for add in (_search_routes, _item_routes, _info_routes):
        add(app, svc, auth)
    app.mount("/static", StaticFiles(directory=STATIC), name="static")
    plain_openapi = app.openapi

    def openapi() -> dict:  # the JSON body's sub-models live in components, where its $refs point
        schema = plain_openapi()
        schema.setdefault("components", {}).setdefault("schemas", {}).update(JSON_DEFS)
        words = {"file": encoder.modality_words() if encoder else [],
                 "text": encoder.modality_words(captions=True) if encoder else []}
        return contract(schema, bool(token), max_k, max_batch, live.get().dim, words)

    app.openapi = openapi
    app.state.live, app.state.encoder = live, encoder
    return app
