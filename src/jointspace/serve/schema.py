"""The service's OpenAPI schema as the server behaves: the JSON and form bodies of POST /search, exactly
one query form, the filter keys and their types, the server's limits and the model's modality words."""

from __future__ import annotations

import copy

from jointspace.index.filters import MAX_VALUES, WHERE_TYPES
from jointspace.kinds.text import NOT_BLANK
from jointspace.serve.parsing import SearchIn

JSON_SCHEMA = SearchIn.model_json_schema(ref_template="#/components/schemas/{model}")
JSON_DEFS = JSON_SCHEMA.pop("$defs", {})
# exactly one of the query forms, as the server enforces it (an empty body is a 422)
JSON_SCHEMA["oneOf"] = [{"required": ["text"]}, {"required": ["vector"]}, {"required": ["queries"]}]
# a form carries one uploaded file (text queries go in a JSON body)
MULTIPART = {"encoding": {"file": {"contentType": "image/png, image/jpeg, image/webp, application/x-npy"}}}
MULTIPART_SCHEMA = {"type": "object", "required": ["file"], "additionalProperties": False, "properties": {
    "file": {"type": "string", "format": "binary", "description": "image (PNG/JPEG/...) or .npy array"},
    "modality": {"type": "string", "description": "modality of the file: a modality name, or a kind word (image, "
                                                  "audio, lidar, points); it must read the file. Empty or "
                                                  "left out: the one whose kind reads the file's type"},
    "k": {"type": "integer", "default": 10, "minimum": 1},
    "where": {"type": "string", "description": 'filter: "label=3&split=test" (a JSON object is also taken)'},
}}


def _query_forms(schema: dict, dim: int) -> None:
    """Exactly one query form, as the server takes it: a non-blank text, `dim` finite numbers not all
    zero, or (the body only) a batch; the other forms absent or null."""
    forms = {"text": {"type": "string", "pattern": NOT_BLANK},
             "vector": {"type": "array", "minItems": dim, "maxItems": dim, "items": {"type": "number"},
                        "not": {"items": {"const": 0}}},
             "queries": {"type": "array"}}

    def one_of(names: list[str]) -> list[dict]:
        branches = [{"required": [n], "properties": {o: forms[o] if o == n else {"type": "null"} for o in names}}
                    for n in names]
        if "queries" in names:  # a batch's queries name their own modality
            branches[-1]["properties"]["modality"] = {"type": "null"}
        return branches

    schema["components"]["schemas"]["QueryIn"]["oneOf"] = one_of(["text", "vector"])
    body = schema["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    body["oneOf"] = one_of(["text", "vector", "queries"])


def _where_forms(schema: dict) -> None:
    """`where` names only the filter keys, each with its type, as parse_where checks them."""
    def one(typ: type) -> dict:
        return {"type": "integer", "minimum": -(2**63), "maximum": 2**63 - 1} if typ is int else {"type": "string"}

    fields = {k: {"anyOf": [one(t), {"type": "array", "items": one(t), "minItems": 1, "maxItems": MAX_VALUES}]}
              for k, t in WHERE_TYPES.items()}
    body = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    body["application/json"]["schema"]["properties"]["where"] = {
        "anyOf": [{"type": "object", "properties": fields, "additionalProperties": False}, {"type": "null"}],
        "description": 'metadata filter, e.g. {"label": 3, "split": "test", "modality": ["image", "audio"]}'}
    words = "|".join(k for k, t in WHERE_TYPES.items() if t is str)
    pair = f"(?:(?:{words})=[^&]*|label=-?[0-9]{{1,18}})"
    body["multipart/form-data"]["schema"]["properties"]["where"]["pattern"] = f"^(?:{pair}(?:&{pair})*)?$"


def _limits(schema: dict, max_k: int, max_batch: int, words: dict[str, list[str]]) -> None:
    """k and the batch within the server's limits; modality words its model resolves (text queries:
    its caption modalities, files: the others)."""
    body = schema["paths"]["/search"]["post"]["requestBody"]["content"]
    as_json, form = body["application/json"]["schema"], body["multipart/form-data"]["schema"]
    form["properties"]["modality"]["enum"] = ["", *words["file"]]
    as_json["properties"]["k"]["maximum"] = form["properties"]["k"]["maximum"] = max_k
    for branch in as_json["properties"]["queries"].get("anyOf", []):
        if branch.get("type") == "array":
            branch["maxItems"] = max_batch
    for query in (as_json, schema["components"]["schemas"]["QueryIn"]):
        query["properties"]["modality"] = {"anyOf": [{"enum": words["text"]}, {"type": "null"}],
                                           "description": "modality to encode `text` with, if the model has several"}


def contract(schema: dict, with_token: bool, max_k: int, max_batch: int, dim: int,
             words: dict[str, list[str]]) -> dict:
    """The schema as the server behaves: bearer auth (and its 401) only when a token is set; the
    server's limits, the index's vector dimension and the model's modality words."""
    schema = copy.deepcopy(schema)
    _query_forms(schema, dim)
    _where_forms(schema)
    _limits(schema, max_k, max_batch, words)
    for ops in schema.get("paths", {}).values():
        for op in ops.values():
            if "security" not in op:
                continue
            if with_token:
                op.setdefault("responses", {})["401"] = {"description": "missing or wrong bearer token"}
            else:
                del op["security"]
    if not with_token:
        schema.get("components", {}).pop("securitySchemes", None)
    return schema
