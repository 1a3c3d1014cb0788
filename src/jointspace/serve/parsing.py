"""Parse a POST /search request (JSON or multipart) into checked queries; every failure is a 4xx."""

from __future__ import annotations

import json
from dataclasses import dataclass, field

from pydantic import BaseModel, ConfigDict, Field, StrictFloat, StrictInt, StrictStr, ValidationError
from starlette.datastructures import Headers, UploadFile
from starlette.formparsers import MultiPartException, MultiPartParser
from starlette.requests import Request

from jointspace.index.filters import IndexStoreError, parse_where
from jointspace.kinds.text import MAX_TEXT_CHARS, NOT_BLANK

WhereValue = StrictInt | StrictStr | StrictFloat | list[StrictInt | StrictStr | StrictFloat]  # 3.0 is a JSON integer


class BadRequest(Exception):
    """A request the service refuses: HTTP status and a detail naming the field."""

    def __init__(self, status: int, detail: str):
        super().__init__(detail)
        self.status, self.detail = status, detail


class QueryIn(BaseModel):
    """One query: a text (encoded by the model) or a raw vector."""

    model_config = ConfigDict(extra="forbid", json_schema_extra={  # exactly one, as the server enforces it
        "oneOf": [{"required": ["text"]}, {"required": ["vector"]}]})
    text: str | None = Field(None, max_length=MAX_TEXT_CHARS, pattern=NOT_BLANK,
                             description="text to encode with the model (not blank)")
    vector: list[float] | None = Field(None, max_length=65536, description="raw joint-space vector (normalised)")
    modality: str | None = Field(None, description="modality to encode `text` with, if the model has several")


class SearchIn(QueryIn):
    """JSON body of POST /search: one query (text/vector) or a batch in `queries`."""

    k: int = Field(10, ge=1, description="results per query (at most the server's max_k)")
    where: dict[str, WhereValue] | None = Field(
        None, description='metadata filter, e.g. {"label": 3, "split": "test", "modality": ["image", "audio"]}')
    queries: list[QueryIn] | None = Field(None, min_length=1, description="batch of queries")


@dataclass
class Query:
    """One parsed query: exactly one of text, vector or file bytes."""

    text: str | None = None
    vector: list[float] | None = None
    file: bytes | None = None
    filename: str = ""
    modality: str | None = None

    def describe(self) -> str:
        if self.text is not None:
            return f"text: {self.text[:80]}"
        if self.vector is not None:
            return f"vector[{len(self.vector)}]"
        return f"file: {self.filename} ({len(self.file or b'')} bytes)"


@dataclass
class SearchRequest:
    """Parsed queries plus k and filters."""

    queries: list[Query]
    k: int = 10
    where: dict[str, list] = field(default_factory=dict)


async def read_body(request: Request, max_bytes: int) -> bytes:
    """The request body, refusing (413) more than `max_bytes` before reading it all."""
    declared = request.headers.get("content-length")
    if declared is not None:
        if not declared.strip().isdigit():
            raise BadRequest(400, f"content-length: not a number ({declared[:40]!r})")
        if int(declared) > max_bytes:
            raise BadRequest(413, f"request body of {int(declared)} bytes is over the limit of {max_bytes}")
    chunks, size = [], 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > max_bytes:
            raise BadRequest(413, f"request body is over the limit of {max_bytes} bytes")
        chunks.append(chunk)
    return b"".join(chunks)


def _validation_detail(err: ValidationError) -> str:
    """Pydantic errors as one line naming each field."""
    return "; ".join(f"{'.'.join(str(p) for p in e['loc']) or 'body'}: {e['msg']}" for e in err.errors()[:10])


def _one(q: QueryIn, where: str) -> Query:
    given = [n for n in ("text", "vector") if getattr(q, n) is not None]
    if len(given) != 1:
        raise BadRequest(422, f"{where}: give exactly one of text or vector (got {given or 'none'})")
    return Query(text=q.text, vector=q.vector, modality=q.modality)


def parse_json(body: bytes, max_k: int, max_batch: int) -> SearchRequest:
    """JSON body -> SearchRequest."""
    try:
        data = SearchIn.model_validate_json(body)
    except ValidationError as err:
        raise BadRequest(422, _validation_detail(err)) from None
    if data.queries is not None:
        if data.text is not None or data.vector is not None:
            raise BadRequest(422, "body: give either queries or a single text/vector, not both")
        if data.modality is not None:
            raise BadRequest(422, "modality: in a batch, each query names its own modality")
        if len(data.queries) > max_batch:
            raise BadRequest(422, f"queries: {len(data.queries)} is more than max_batch {max_batch}")
        queries = [_one(q, f"queries.{i}") for i, q in enumerate(data.queries)]
    else:
        queries = [_one(data, "body")]
    return SearchRequest(queries, _check_k(data.k, max_k), _where(data.where))


def _check_k(k: int, max_k: int) -> int:
    if not 1 <= k <= max_k:
        raise BadRequest(422, f"k: must be between 1 and {max_k}, got {k}")
    return k


def _where(raw: dict | str | None) -> dict[str, list]:
    """A where filter from JSON (object) or a form field (JSON object or key=value[&key=value])."""
    if isinstance(raw, str):
        raw = raw.strip()
        if not raw:
            return {}
        if raw.startswith("{"):
            try:
                raw = json.loads(raw)
            except json.JSONDecodeError as err:
                raise BadRequest(422, f"where: not valid JSON ({err})") from None
        else:
            raw = [p for p in raw.split("&") if p]
    try:
        return parse_where(raw)
    except IndexStoreError as err:
        raise BadRequest(422, str(err)) from None


async def parse_multipart(headers: Headers, body: bytes, max_k: int) -> SearchRequest:
    """multipart/form-data with `file` (image or .npy), and optional modality, k, where (a text query is
    a JSON body)."""

    async def stream():
        yield body

    try:
        form = await MultiPartParser(headers, stream(), max_files=1, max_fields=8,
                                     max_part_size=64 * 1024).parse()
    except MultiPartException as err:
        raise BadRequest(400, f"multipart: {err.message}") from None
    if "text" in form:
        raise BadRequest(422, 'form: a text query goes in a JSON body ({"text": ...}); a form carries a file')
    unknown = sorted(set(form.keys()) - {"file", "modality", "k", "where"})
    if unknown:
        raise BadRequest(422, f"form: unknown fields {unknown} (known: file, modality, k, where)")
    file = form.get("file")
    modality = form.get("modality")
    if modality is not None and not isinstance(modality, str):
        raise BadRequest(422, "modality: must be a form field, not a file")
    if not isinstance(file, UploadFile):
        raise BadRequest(422, "file: expected an uploaded file (a form part with a filename)")
    data = await file.read()
    if not data:
        raise BadRequest(422, f"file {file.filename!r}: empty upload")
    query = Query(file=data, filename=file.filename or "upload", modality=modality or None)
    k_raw = form.get("k", "10")
    if not isinstance(k_raw, str) or not k_raw.strip().lstrip("-").isdigit() or len(k_raw) > 12:
        raise BadRequest(422, f"k: expected an integer, got {str(k_raw)[:40]!r}")
    where = form.get("where")
    if where is not None and not isinstance(where, str):
        raise BadRequest(422, "where: must be a form field, not a file")
    return SearchRequest([query], _check_k(int(k_raw), max_k), _where(where))


async def parse_search(request: Request, max_bytes: int, max_k: int, max_batch: int) -> SearchRequest:
    """Route by content type; anything unexpected while parsing becomes a 400, never a 500."""
    ctype = request.headers.get("content-type", "").split(";")[0].strip().lower()
    try:
        if ctype not in ("application/json", "multipart/form-data"):
            raise BadRequest(415, f"content-type {ctype or '(none)'!r}: send application/json or "
                                  "multipart/form-data")
        body = await read_body(request, max_bytes)
        if ctype == "application/json":
            return parse_json(body, max_k, max_batch)
        return await parse_multipart(request.headers, body, max_k)
    except BadRequest:
        raise
    except Exception as err:  # noqa: BLE001 - malformed input must not surface as a server error
        raise BadRequest(400, f"malformed request: {type(err).__name__}: {str(err)[:200]}") from None
