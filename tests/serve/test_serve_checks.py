"""`jointspace serve` refuses what it cannot mean before it says "serving": a port out of range or in
use, an empty token, limits below 1 (one line on stderr, exit 2); with a token, the docs need it too."""

from __future__ import annotations

import socket

import pytest
from fastapi.testclient import TestClient
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.serve.app import create_app


@pytest.fixture
def started(monkeypatch):
    """uvicorn.run replaced by a recorder: these commands must never get that far."""
    import uvicorn

    calls = []
    monkeypatch.setattr(uvicorn, "run", lambda app, **kw: calls.append(kw))
    return calls


def refused(args: list[str]) -> str:
    r = CliRunner().invoke(app, ["serve", *args])
    lines = [ln for ln in r.stderr.splitlines() if ln.strip()]
    assert r.exit_code == 2 and len(lines) == 1 and lines[0].startswith("error: "), r.output
    assert "serving" not in r.output and "Traceback" not in r.output
    return lines[0]


@pytest.mark.parametrize("args,says", [
    (["--port", "99999"], "--port 99999: not a TCP port (1..65535)"),
    (["--port", "0"], "--port 0: not a TCP port"),
    (["--token", ""], "--token: empty"),
    (["--token", "  "], "--token: empty"),
    (["--max-k", "0"], "--max-k 0: must be at least 1"),
    (["--max-k", "-5"], "--max-k -5: must be at least 1"),
    (["--max-batch", "0"], "--max-batch 0: must be at least 1"),
    (["--max-upload-mb", "0"], "--max-upload-mb 0.0: must be a finite size of at least one byte"),
    (["--max-upload-mb", "inf"], "--max-upload-mb inf: must be a finite size"),
    (["--max-upload-mb", "nan"], "--max-upload-mb nan: must be a finite size"),
])
def test_serve_refuses_settings_it_cannot_mean(tiny_index, started, args, says):
    assert says in refused([str(tiny_index), *args]) and not started


def test_serve_refuses_a_port_in_use_naming_it(tiny_index, started):
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        port = busy.getsockname()[1]
        line = refused([str(tiny_index), "--port", str(port)])
    assert f"127.0.0.1:{port}: cannot listen there" in line and not started


def test_create_app_refuses_an_empty_token_and_no_results(tiny_index):
    with pytest.raises(ValueError, match="--token: empty"):
        create_app(tiny_index, token="", load_model=False)
    with pytest.raises(ValueError, match="--max-k 0"):
        create_app(tiny_index, max_k=0, load_model=False)


def test_with_a_token_docs_and_schema_need_it_too(tiny_index):
    with TestClient(create_app(tiny_index, token="s3cret", load_model=False)) as c:
        for path in ("/openapi.json", "/docs", "/redoc"):
            r = c.get(path)
            assert r.status_code == 401 and r.headers["www-authenticate"] == "Bearer", path
            assert r.json() == {"detail": "missing or wrong bearer token"}
            assert c.get(path, headers={"Authorization": "Bearer nope"}).status_code == 401
            assert c.get(path, headers={"Authorization": "Bearer s3cret"}).status_code == 200, path
        assert c.get("/healthz").status_code == 200 and c.get("/").status_code == 200
        assert c.get("/stats", headers={"Authorization": "Bearer s3cret"}).json()["responses"]["4xx"] == 6
    with TestClient(create_app(tiny_index, load_model=False)) as c:  # no token: open, as before
        assert c.get("/openapi.json").status_code == 200 and c.get("/docs").status_code == 200
