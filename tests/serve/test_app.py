"""The FastAPI service: happy paths, limits, auth, and a bounded fuzz of malformed requests (no 5xx)."""

from __future__ import annotations

import importlib.util
import io
import json
import random
import shutil
import socket

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from jointspace.data.shards import ReadStats, iter_samples, split_urls
from jointspace.index.store import FingerprintError
from jointspace.serve.app import create_app

LIMIT = 100_000


@pytest.fixture(scope="module", params=["faiss", "milvus"])
def client(request, tiny_index):
    """The service over the tiny index, once per backend (the same items in FAISS and in Milvus Lite)."""
    index = tiny_index if request.param == "faiss" else request.getfixturevalue("tiny_milvus_index")
    app = create_app(index, max_upload_bytes=LIMIT, max_k=50, max_batch=8)
    with TestClient(app) as c:  # server exceptions are raised, so a real bug fails loudly
        yield c


@pytest.fixture(scope="module")
def sample(digits_dir):
    return next(iter_samples(split_urls(digits_dir, "test"), ReadStats()))


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def png(arr) -> bytes:
    buf = io.BytesIO()
    Image.fromarray(np.asarray(arr, np.uint8)).save(buf, format="PNG")
    return buf.getvalue()


def npy(arr) -> bytes:
    buf = io.BytesIO()
    np.save(buf, np.asarray(arr, np.float32))
    return buf.getvalue()


def test_text_search_and_batch(client):
    r = client.post("/search", json={"text": "the digit four", "k": 5, "where": {"modality": "image"}})
    assert r.status_code == 200, r.text
    hits = r.json()["results"][0]["hits"]
    assert len(hits) == 5 and {h["modality"] for h in hits} == {"image"}
    assert [h["score"] for h in hits] == sorted((h["score"] for h in hits), reverse=True)
    r = client.post("/search", json={"queries": [{"text": "a spoken two"}, {"vector": [0.5] * 16}], "k": 3,
                                     "where": {"split": ["val", "test"], "label": [1, 2, 3]}})
    assert r.status_code == 200, r.text
    results = r.json()["results"]
    assert [len(x["hits"]) for x in results] == [3, 3]
    assert all(h["split"] in ("val", "test") and h["label"] in (1, 2, 3) for x in results for h in x["hits"])


def test_upload_image_and_audio_find_their_sample(client, sample):
    r = client.post("/search", files={"file": ("d.png", png(sample["image"]), "image/png")},
                    data={"modality": "image", "k": "2", "where": "modality=image&split=test"})
    assert r.status_code == 200, r.text
    top = r.json()["results"][0]["hits"][0]
    assert top["key"] == sample["key"] and top["score"] == pytest.approx(1.0, abs=1e-4)
    r = client.post("/search", files={"file": ("a.npy", npy(sample["audio"]))},
                    data={"modality": "audio", "where": '{"modality": "audio"}'})
    assert r.status_code == 200 and r.json()["results"][0]["hits"][0]["key"] == sample["key"], r.text
    r = client.post("/search", files={"file": ("upload", png(sample["image"]))})  # no modality, no extension
    assert r.status_code == 200 and r.json()["results"][0]["hits"][0]["key"] == sample["key"], r.text
    r = client.post("/search", files={"text": (None, "the digit one")}, data={"k": "4"})
    assert r.status_code == 422 and "JSON body" in r.json()["detail"]  # a form carries a file


def test_items_thumbnails_health_stats_docs_page(client, sample):
    item = client.get(f"/items/{sample['key']}").json()
    assert item["modalities"] == ["audio", "image", "text"] and item["label"] == sample["label"]
    r = client.get(f"/items/{sample['key']}/thumbnail")
    assert r.headers["content-type"] == "image/png" and Image.open(io.BytesIO(r.content)).size == (64, 64)
    assert client.get("/items/nope").status_code == 404 and "nope" in client.get("/items/nope").json()["detail"]
    assert client.get("/items/nope/thumbnail").status_code == 404
    assert client.get("/healthz").json() == {"status": "ok", "n_items": 540}
    stats = client.get("/stats").json()
    assert stats["n_items"] == 540 and stats["limits"]["max_k"] == 50 and stats["query_modalities"]["audio"]
    spec = client.get("/openapi.json").json()
    body = spec["paths"]["/search"]["post"]["requestBody"]["content"]
    assert set(body) == {"application/json", "multipart/form-data"} and "QueryIn" in spec["components"]["schemas"]
    docs = client.get("/docs")
    assert docs.status_code == 200 and "/openapi.json" in docs.text
    if importlib.util.find_spec("fastapi_offline"):  # Swagger UI served from here, not a CDN
        assert "cdn." not in docs.text and client.get("/redoc").status_code == 200
    page = client.get("/")
    assert page.status_code == 200 and 'id="drop"' in page.text and "http" not in page.text.replace("http-equiv", "")
    assert client.get("/static/app.js").status_code == 200


@pytest.mark.parametrize("kwargs,status,detail", [
    ({"json": {"text": "x", "k": 51}}, 422, "k: must be between 1 and 50"),
    ({"json": {"text": "x", "where": {"colour": "red"}}}, 422, "unknown key 'colour'"),
    ({"json": {"text": "x", "where": {"label": "three"}}}, 422, "where label: expected a int"),
    ({"json": {"text": "x", "where": {"label": []}}}, 422, "where label: an empty list allows no value"),
    ({"json": {"text": "x", "where": {"split": "test", "modality": []}}}, 422, "where modality: an empty list"),
    ({"files": {"file": ("x.png", png(np.zeros((8, 8))))}, "data": {"where": '{"label": []}'}}, 422,
     "where label: an empty list"),
    ({"content": b"{bad json", "headers": {"content-type": "application/json"}}, 422, "Invalid JSON"),
    ({"content": b"hi", "headers": {"content-type": "text/plain"}}, 415, "content-type 'text/plain'"),
    ({"files": {"file": ("x.png", b"not an image at all")}, "data": {"modality": "image"}}, 400, "x.png: not an image"),
    ({"files": {"file": ("x.png", png(np.zeros((8, 8))))}, "data": {"modality": "audio"}}, 400, "not a .npy array"),
    ({"files": {"file": ("x.png", png(np.zeros((8, 8))))}, "data": {"modality": "text"}}, 400, "is text"),
    ({"files": {"file": ("x.png", png(np.zeros((8, 8))))}, "data": {"modality": "lidar"}}, 400, "unknown modality"),
    ({"files": {"file": ("x.bin", b"not a known file type")}}, 400, "say its modality"),
    ({"files": {"file": ("a.npy", npy(np.zeros((30, 5))))}, "data": {"modality": "audio"}}, 400, "[T, 13]"),
    ({"files": {"file": ("big.png", b"\x89PNG" + bytes(LIMIT))}, "data": {"modality": "image"}}, 413, "over the limit"),
    ({"json": {"vector": [1.0] * 15}}, 400, "has 15 values, the index has dimension 16"),
    ({"json": {"vector": [1.0] * 16, "modality": "\u0100"}}, 400, "is not a text modality of this model"),
    ({"json": {"queries": [{"text": "a"}] * 9}}, 422, "more than max_batch 8"),
    ({"json": {"k": 3}}, 422, "exactly one of text or vector"),
])
def test_bad_input_is_a_4xx_naming_the_problem(client, kwargs, status, detail):
    r = client.post("/search", **kwargs)
    assert r.status_code == status, r.text
    assert detail in json.dumps(r.json()["detail"])


@pytest.mark.parametrize("where", [{"key": 'a" or key != "'}, {"split": ") or (1==1"}, {"caption": "x\\\" or 1==1"},
                                   {"key": ["digits-test-00001", '"] or key not in ["']}])
def test_hostile_where_values_are_only_values(client, where):
    r = client.post("/search", json={"vector": [0.5] * 16, "k": 50, "where": where})
    assert r.status_code == 200, r.text
    hits = r.json()["results"][0]["hits"]
    assert len(hits) == (3 if isinstance(where.get("key"), list) else 0)  # the real key's three modalities
    assert {h["key"] for h in hits} <= {"digits-test-00001"}


def test_bearer_token(tiny_index):
    with TestClient(create_app(tiny_index, token="s3cret")) as c:
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        r = c.post("/search", json={"text": "one"})
        assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer" and r.json()["detail"]
        assert c.get("/stats", headers={"Authorization": "Bearer nope"}).status_code == 401
        ok = c.post("/search", json={"text": "one"}, headers={"Authorization": "Bearer s3cret"})
        assert ok.status_code == 200


def test_vector_only_server_and_fingerprint_refusal(tiny_index, tiny_run, tmp_path):
    with TestClient(create_app(tiny_index, load_model=False)) as c:
        assert c.post("/search", json={"vector": [1.0] * 16}).status_code == 200
        r = c.post("/search", json={"text": "one"})
        assert r.status_code == 400 and "no model" in r.json()["detail"]
    other = tmp_path / "other"
    shutil.copytree(tiny_run, other)
    (other / "config.yaml").write_text((other / "config.yaml").read_text() + "\n# changed\n")
    with pytest.raises(FingerprintError, match="built with model"):
        create_app(tiny_index, run_dir=other)


def _fuzz_requests(rng: random.Random, sample_png: bytes) -> list[dict]:
    """Malformed and odd requests: random bytes, wrong types, huge k, missing fields, bad multipart."""
    junk = [None, True, -1, 0, 10**30, 1.5, "", "x" * 3000, [], {}, [1, "a"], {"a": {"b": []}}, float("nan"), "NaN",
            [1e38] * 16, [0.0] * 16, [float("inf")] * 16]
    keys = ["text", "vector", "k", "where", "queries", "modality", "image", "extra"]
    ctypes = ["application/json", "multipart/form-data", "multipart/form-data; boundary=zz", "text/plain", "",
              "application/x-www-form-urlencoded", "image/png", "application/json; charset=latin-1"]
    reqs: list[dict] = []
    for _ in range(70):  # random bytes under random content types
        body = bytes(rng.getrandbits(8) for _ in range(rng.randint(0, 300)))
        reqs.append({"method": "POST", "url": "/search", "content": body,
                     "headers": {"content-type": rng.choice(ctypes)}})
    for _ in range(80):  # JSON objects with wrong types and odd combinations
        obj = {rng.choice(keys): rng.choice(junk) for _ in range(rng.randint(0, 4))}
        if rng.random() < 0.4:
            obj["text"] = rng.choice(["the digit one", "", " ", "ä" * 10, "\x00"])
        if rng.random() < 0.2:
            obj["where"] = rng.choice([{"label": 10**30}, {"key": ["a"] * 5000}, {"label": -(2**63)},
                                       {"split": "\x00"}, {"caption": "x" * 5000}, {"label": [True]}])
        if rng.random() < 0.2:
            obj["queries"] = [{rng.choice(keys): rng.choice(junk)} for _ in range(rng.randint(0, 10))]
        text = json.dumps(obj, allow_nan=True)
        if rng.random() < 0.15:
            text = text[: rng.randint(0, len(text))]  # truncated
        reqs.append({"method": "POST", "url": "/search", "content": text.encode(),
                     "headers": {"content-type": "application/json"}})
    payloads = [sample_png, b"", b"\x93NUMPY" + bytes(30), npy(np.zeros((3, 13))), npy(np.ones((2, 2, 2))),
                npy(np.full((5, 13), 3e38)), npy(np.zeros((0, 13))), npy(np.float32(1.0)),
                bytes(rng.getrandbits(8) for _ in range(500)), sample_png[:40]]
    for _ in range(50):  # multipart forms: files of the wrong kind, missing or extra fields, bad k/where
        files = {"file": ("f" + rng.choice([".png", ".npy", ""]), rng.choice(payloads))}
        if rng.random() < 0.1:
            files = {"file": ("a.png", sample_png), "other": ("b.png", sample_png)}
        data = {}
        for field, values in [("modality", ["image", "audio", "text", "lidar", "", "sequence"]),
                              ("k", ["1", "0", "-3", "abc", "9" * 40, "50", ""]),
                              ("where", ["label=3", "bogus=1", "{", '{"label": [1, {}]}', "label=x", "&&", "="]),
                              ("text", ["one", ""]), ("junk", ["1"])]:
            if rng.random() < 0.5:
                data[field] = rng.choice(values)
        reqs.append({"method": "POST", "url": "/search", "files": files if rng.random() < 0.9 else None,
                     "data": data})
    for path in ["/search", "/items/%00", "/items/" + "z" * 500, "/items/..%2F..%2Fetc", "/items/ä/thumbnail",
                 "/stats?x=1", "/healthz", "/static/../../etc/passwd", "/nope"]:
        reqs.append({"method": rng.choice(["GET", "PUT", "DELETE"]) if path == "/search" else "GET", "url": path})
    return reqs


def test_fuzz_malformed_requests_never_5xx(client, sample):
    rng = random.Random(1234)
    reqs = _fuzz_requests(rng, png(sample["image"]))
    assert len(reqs) >= 200
    statuses = []
    for req in reqs:
        r = client.request(**req)
        statuses.append(r.status_code)
        assert r.status_code < 500, (req, r.text)
        if r.status_code >= 400:
            assert "detail" in r.json(), (req, r.text)
    assert sum(s >= 400 for s in statuses) > 150  # mostly refused, as they should be
    assert client.get("/stats").json()["responses"].get("5xx", 0) == 0


def test_serve_command_binds_loopback_by_default(tiny_index, monkeypatch):
    import typer
    import uvicorn
    from typer.testing import CliRunner

    from jointspace.commands.serve import serve

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append((app, kw)))
    app = typer.Typer()
    app.command()(serve)
    app.command("other")(lambda: None)  # two commands: `serve` stays a sub-command
    port = free_port()  # `serve` binds the port once to check it is free
    r = CliRunner().invoke(app, ["serve", str(tiny_index), "--port", str(port), "--max-k", "7"])
    assert r.exit_code == 0, r.output
    (served, kw), = calls
    assert kw["host"] == "127.0.0.1" and kw["port"] == port
    with TestClient(served) as c:
        assert c.post("/search", json={"text": "one", "k": 8}).status_code == 422
    r = CliRunner().invoke(app, ["serve", str(tiny_index), "--host", "0.0.0.0", "--port", str(free_port())])
    assert r.exit_code == 0 and "without a token" in r.output


def test_chunked_upload_over_the_limit_is_refused(client):
    def chunks():
        for _ in range(30):
            yield b"x" * 10_000  # 300 kB, no content-length

    r = client.post("/search", content=chunks(), headers={"content-type": "application/json"})
    assert r.status_code == 413 and "over the limit" in r.json()["detail"]


def test_running_server_sees_index_changes(tiny_index, tmp_path):
    """`index delete` (any save into the folder) is picked up by a running server without a restart; a
    folder that stops being a valid index leaves the server on the version it has."""
    from jointspace.index.store import IndexStore

    folder = tmp_path / "live"
    shutil.copytree(tiny_index, folder)
    with TestClient(create_app(folder, load_model=False, reload_every_s=0)) as c:
        n0 = c.get("/healthz").json()["n_items"]
        vec = [1.0] * 16
        first = c.post("/search", json={"vector": vec, "k": 3}).json()["results"][0]["hits"][0]["key"]
        store = IndexStore.open(folder)
        removed = store.delete(keys=[first])
        store.save()
        assert removed == 3 and c.get("/healthz").json()["n_items"] == n0 - removed  # its 3 modalities
        keys = [h["key"] for h in c.post("/search", json={"vector": vec, "k": 3}).json()["results"][0]["hits"]]
        assert first not in keys and c.get(f"/items/{first}").status_code == 404
        assert c.get("/stats").json()["reloads"] == 1
        meta = json.loads((folder / "meta.json").read_text())
        (folder / "meta.json").write_text(json.dumps({**meta, "format": "something-else"}))
        assert c.get("/healthz").json()["n_items"] == n0 - removed  # kept the good version
        stats = c.get("/stats").json()
        assert stats["reloads"] == 1 and "format" in stats["reload_error"]


def test_openapi_states_what_the_server_does(tiny_index):
    """Bearer auth (with its 401) only when a token is set; /items 404 documented; exactly one query form."""
    from fastapi.testclient import TestClient

    from jointspace.serve.app import create_app

    open_spec = TestClient(create_app(tiny_index)).get("/openapi.json").json()
    assert "securitySchemes" not in open_spec.get("components", {})
    assert all("security" not in op for ops in open_spec["paths"].values() for op in ops.values())
    assert "404" in open_spec["paths"]["/items/{key}"]["get"]["responses"]
    body = open_spec["paths"]["/search"]["post"]["requestBody"]["content"]["application/json"]["schema"]
    assert [b["required"] for b in body["oneOf"]] == [["text"], ["vector"], ["queries"]]
    vector = body["oneOf"][1]["properties"]
    assert vector["vector"]["minItems"] == vector["vector"]["maxItems"] == 16 and vector["text"] == {"type": "null"}
    form = open_spec["paths"]["/search"]["post"]["requestBody"]["content"]["multipart/form-data"]
    assert form["schema"]["required"] == ["file"] and "image" in form["schema"]["properties"]["modality"]["enum"]
    locked_client = TestClient(create_app(tiny_index, token="s3cret"))
    assert locked_client.get("/openapi.json").status_code == 401  # README: only /healthz and the page are open
    locked = locked_client.get("/openapi.json", headers={"Authorization": "Bearer s3cret"}).json()
    search = locked["paths"]["/search"]["post"]
    assert search["security"] and "401" in search["responses"] and "HTTPBearer" in locked["components"]["securitySchemes"]
    assert "security" not in locked["paths"]["/healthz"]["get"]
