"""The audit's neighbour searches over Milvus (Milvus Lite, the real engine, no mocks) find what the FAISS
route finds, and leave no collection behind."""

from __future__ import annotations

import csv
import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("milvus_lite")

from jointspace.audit.run import audit_space
from jointspace.audit.search import AUDIT_MARK, NeighbourSearch
from jointspace.audit.space import Space, content_hash
from jointspace.cli import app
from jointspace.index.milvus_conn import client, close_clients

runner = CliRunner()


def _planted_space() -> Space:
    """300 samples x 2 modalities in 3 classes: 2 train copies in test (leaks), 1 within train, 1 swap."""
    rng = np.random.default_rng(0)
    n, labels = 300, np.arange(300) % 3
    centres = rng.normal(size=(3, 16))
    emb = {m: centres[labels] + 0.6 * rng.normal(size=(n, 16)) + 0.3 * rng.normal(size=(n, 16)) for m in ("a", "b")}
    splits = np.array(["train"] * 240 + ["test"] * 60, dtype=object)
    for src, dst in ((3, 250), (4, 251), (5, 6)):
        for e in emb.values():
            e[dst] = e[src] + 1e-3 * rng.normal(size=16)
        labels[dst] = labels[src]
    emb["b"][[10, 11]] = emb["b"][[11, 10]]
    emb = {m: (e / np.linalg.norm(e, axis=1, keepdims=True)).astype(np.float32) for m, e in emb.items()}
    hashes = {m: np.array([content_hash(rng.random(4)) for _ in range(n)], dtype=object) for m in emb}
    return Space([f"s{i:03d}" for i in range(n)], splits, labels.astype(np.int64), emb, {"a": "image", "b": "image"},
                 ["x", "y", "z"], hashes, labelled=False)


def _rows(found) -> dict:
    return {(f.key, f.issue, f.partner_key, f.modality): f.score for f in found}


def test_every_finder_over_milvus_lite_equals_faiss_and_drops_its_collections(tmp_path):
    space = _planted_space()
    faiss_found, faiss_summary, faiss_scores = audit_space(space)
    uri = str(tmp_path / "audit.db")
    with NeighbourSearch("milvus", uri) as search:
        found, summary, scores = audit_space(space, search=search)
        assert sum(c.startswith(AUDIT_MARK) for c in client(uri).list_collections()) >= 1
    ref, got = _rows(faiss_found), _rows(found)
    assert got.keys() == ref.keys() and all(abs(got[k] - ref[k]) < 1e-5 for k in ref)
    assert {"s250", "s251"} <= {k for k, issue, *_ in ref if issue == "leak"} and ("s011", "mismatch") in \
        {(k, issue) for k, issue, *_ in ref}
    for name in faiss_scores:
        assert np.allclose(scores[name], faiss_scores[name], atol=1e-5)
    assert summary["mismatch_pairs"] == faiss_summary["mismatch_pairs"]
    assert not [c for c in client(uri).list_collections() if c.startswith(AUDIT_MARK)]
    close_clients(uri)


def test_without_a_uri_a_temporary_lite_file_is_used_and_removed():
    with NeighbourSearch("milvus") as search:
        folder = search._scratch.name
        sims, rows = search.index(np.eye(4, dtype=np.float32)).search(np.eye(4, dtype=np.float32)[:2], 2)
    assert rows[:, 0].tolist() == [0, 1] and np.allclose(sims[:, 0], 1.0)
    assert not Path(folder).exists()


def test_cli_audit_over_milvus_writes_the_same_findings(tiny_run, faulty_digits, tmp_path):
    outs = {}
    for backend in ("faiss", "milvus"):
        outs[backend] = tmp_path / backend
        args = ["audit", str(tiny_run), str(faulty_digits), "--out", str(outs[backend]), "--backend", backend]
        done = runner.invoke(app, args + (["--uri", str(tmp_path / "a.db")] if backend == "milvus" else []))
        assert done.exit_code == 0, done.output
    rows = {b: {(r["key"], r["issue"], r["partner_key"], r["modality"]): float(r["score"])
                for r in csv.DictReader((o / "audit.csv").open())} for b, o in outs.items()}
    assert rows["milvus"].keys() == rows["faiss"].keys() and any(k[:2] == ("dup-0", "duplicate") for k in rows["faiss"])
    assert all(abs(rows["milvus"][k] - rows["faiss"][k]) < 1e-4 for k in rows["faiss"])
    assert json.loads((outs["milvus"] / "audit.json").read_text())["search_backend"] == "milvus"
    close_clients(str(tmp_path / "a.db"))
    bad = runner.invoke(app, ["audit", str(tiny_run), str(faulty_digits), "--out", str(tmp_path / "x"),
                              "--uri", str(tmp_path / "b.db")])
    assert bad.exit_code == 2 and "--backend milvus" in bad.output and not (tmp_path / "x").exists()
