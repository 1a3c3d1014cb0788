"""Hostile requests get a clear 4xx and the server goes on: a decompression bomb and a pickled .npy as
uploads, lying content types, a 10k-character text, k = 10^9, 1,000 batched queries."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from jointspace.serve.app import create_app

_spec = importlib.util.spec_from_file_location("_hostile_data", Path(__file__).parents[1] / "data" / "test_hostile.py")
_data = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_data)
png_claiming, real_png, pickled_npy, good_npy = _data.png_claiming, _data.real_png, _data.pickled_npy, _data.good_npy


@pytest.fixture(scope="module")
def client(tiny_index):
    with TestClient(create_app(tiny_index, max_k=100, max_batch=32)) as c:
        yield c


@pytest.mark.parametrize(("kwargs", "status", "detail"), [
    ({"files": {"file": ("bomb.png", png_claiming(20000, 20000), "image/png")}}, 400, "decompression bomb"),
    ({"files": {"file": ("big.png", png_claiming(5000, 5000), "image/png")}}, 400, "larger than"),
    ({"files": {"file": ("a.npy", pickled_npy(), "application/x-npy")}, "data": {"modality": "audio"}}, 400,
     "pickle"),
    # lying content types: the bytes decide, the declared type and name do not
    ({"files": {"file": ("a.npy", real_png(), "application/x-npy")}, "data": {"modality": "audio"}}, 400,
     "not a .npy array"),
    ({"files": {"file": ("a.png", good_npy(), "image/png")}}, 400, "not an image"),
    ({"json": {"text": "x" * 10_000}}, 422, "text"),
    ({"json": {"text": "one", "k": 10**9}}, 422, "k"),
    ({"json": {"queries": [{"text": "one"}] * 1000}}, 422, "more than max_batch 32"),
])
def test_hostile_requests_get_a_clear_4xx(client, kwargs, status, detail):
    r = client.post("/search", **kwargs)
    assert r.status_code == status, r.text
    assert detail in r.json()["detail"], r.json()
    assert client.get("/healthz").status_code == 200  # and the server goes on
