"""The Milvus backend against Milvus Lite (the real engine, in this process; no mocks): the same answers
as FAISS Flat for vector, text and file queries with and without filters, filters that no value can
inject into, the commands over a Milvus folder, the model fingerprint, and a killed build."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

pytest.importorskip("milvus_lite")

from jointspace.cli import app
from jointspace.data.shards import ReadStats, iter_samples, split_urls
from jointspace.index.backend import open_store
from jointspace.index.build import SLOW_MILVUS_BUILD_ENV, build_index, open_for_run
from jointspace.index.filters import milvus_where
from jointspace.index.milvus import MilvusStore
from jointspace.index.milvus_conn import alias_target, close_clients
from jointspace.index.store import FingerprintError, IndexStore, IndexStoreError

HOSTILE = ['a" or key != "', "b\\", 'c\\" or 1==1 or key == "', ") or (1==1", "new\nline", "tab\tcr\r",
           "it's", "{keys}", "é😀", 'x" ] or label in [0', "\\\\\""]
TOL = 1e-5


def assert_same(got: list[dict], ref: list[dict], wider: list[dict]) -> None:
    """Milvus hits equal FAISS's: scores position by position (TOL), the same items above the last score,
    and at the last score (a tie the cut may split either way) items FAISS also scores so (`wider`)."""
    assert len(got) == len(ref)
    assert np.allclose([h["score"] for h in got], [h["score"] for h in ref], atol=TOL)
    if not got:
        return
    last = got[-1]["score"]
    above = {(h["key"], h["modality"]) for h in got if h["score"] > last + TOL}
    assert above == {(h["key"], h["modality"]) for h in ref if h["score"] > last + TOL}
    tied = {(h["key"], h["modality"]) for h in wider if abs(h["score"] - last) <= TOL}
    assert {(h["key"], h["modality"]) for h in got if h["score"] <= last + TOL} <= tied
    for h in got:
        assert {c for c in h} >= {"key", "modality", "label", "label_name", "caption", "source", "split", "score"}


def compare(milvus, faiss_store, q: np.ndarray, k: int, where) -> None:
    got, ref, wider = milvus.search(q, k, where), faiss_store.search(q, k, where), faiss_store.search(q, k + 60, where)
    for g, r, w in zip(got, ref, wider):
        assert_same(g, r, w)


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    """3,000 random unit vectors (1,500 samples x 2 modalities, hostile keys among them) in FAISS Flat
    and in a flat Milvus collection."""
    rng = np.random.default_rng(0)
    vecs = rng.normal(size=(3000, 16)).astype(np.float32)
    vecs /= np.linalg.norm(vecs, axis=1, keepdims=True)
    keys = [f"s{i:04d}" for i in range(1500)]
    keys[: len(HOSTILE)] = HOSTILE
    items = [{"key": keys[i // 2], "modality": "ab"[i % 2], "label": (i // 2) % 10, "label_name": f"c{(i // 2) % 10}",
              "caption": f"caption {i}", "source": f"src/{i}", "split": ("train", "val", "test")[i % 3]}
             for i in range(3000)]
    base = tmp_path_factory.mktemp("synthetic")
    faiss_store = IndexStore.create(16, "Flat")
    faiss_store.add(vecs, items)
    milvus = MilvusStore.create(16, {"fingerprint": "f" * 64}, str(base / "synth.db"), "synth", base)
    milvus.add(vecs[:1000], items[:1000], {k: b"png" for k in keys[:5]})
    milvus.add(vecs[1000:], items[1000:])
    milvus.save(base / "synth-index")
    return MilvusStore.open(base / "synth-index"), faiss_store, vecs


def test_filters_quote_every_value():
    expr = milvus_where({"key": HOSTILE, "label": [3, -(2**63)]})
    assert expr.startswith("key in [") and expr.endswith("] and label in [3, -9223372036854775808]")
    assert "\n" not in expr and "\r" not in expr
    with pytest.raises(IndexStoreError, match="unknown key"):
        milvus_where({"key or 1==1": ["x"]})


@pytest.mark.parametrize("where", [None, {"label": [1, 2]}, ["split=test"], {"modality": "b", "label": 3},
                                   {"key": HOSTILE}, {"caption": "caption 7"}])
def test_vector_queries_same_as_faiss(synthetic, where):
    milvus, faiss_store, vecs = synthetic
    q = np.random.default_rng(1).normal(size=(12, 16)).astype(np.float32)
    compare(milvus, faiss_store, np.concatenate([q, vecs[:3]]), 10, where)
    scores, ids = milvus.nearest(q, 7, where)
    assert scores.shape == ids.shape and ids.shape[0] == 12 and (ids >= 0).all()
    assert ids.shape[1] == (1 if where == {"caption": "caption 7"} else 7)


def test_hostile_values_match_only_themselves(synthetic):
    milvus = synthetic[0]
    assert milvus.n_items == 3000
    for key in HOSTILE:
        item = milvus.get(key)
        assert item["key"] == key and item["modalities"] == ["a", "b"], repr(key)
        hits = milvus.search(np.ones((1, 16), np.float32), 50, {"key": key})[0]
        assert sorted(h["modality"] for h in hits) == ["a", "b"] and {h["key"] for h in hits} == {key}
    assert milvus.get('" or key != "') is None and milvus.get("s0100") is not None
    assert milvus.preview(HOSTILE[0]) == b"png" and milvus.get(HOSTILE[0])["has_thumbnail"]
    assert milvus.search(np.ones((1, 16), np.float32), 5, {"split": ['test" or split != "']})[0] == []


def test_add_replace_delete_as_faiss(synthetic):
    milvus, faiss_store, vecs = synthetic
    item = {"key": "extra", "modality": "a", "label": 1, "split": "new"}
    for store in (milvus, faiss_store):
        store.add(vecs[:1], [item])
        with pytest.raises(IndexStoreError, match="already in the index"):
            store.add(vecs[:1], [item])
        store.add(vecs[1:2], [item], replace=True)
    compare(milvus, faiss_store, vecs[1:2], 3, None)
    assert milvus.delete(["extra"]) == faiss_store.delete(["extra"]) == 1
    assert milvus.delete(["s0100"], ["modality=a"]) == faiss_store.delete(["s0100"], ["modality=a"]) == 1
    assert milvus.delete([HOSTILE[1]]) == faiss_store.delete([HOSTILE[1]]) == 2
    assert milvus.preview(HOSTILE[1]) is None and milvus.get(HOSTILE[1]) is None
    with pytest.raises(IndexStoreError, match="refusing to delete everything"):
        milvus.delete()
    assert milvus.n_items == faiss_store.n_items == 2997
    compare(milvus, faiss_store, vecs[:5], 10, {"label": [0, 1]})


def test_text_and_file_queries_same_as_faiss(tiny_milvus_index, tiny_index, digits_dir):
    milvus, enc = open_for_run(tiny_milvus_index)
    faiss_store, _ = open_for_run(tiny_index)
    assert milvus.backend == "milvus" and milvus.n_items == faiss_store.n_items == 540
    sample = next(iter_samples(split_urls(digits_dir, "test"), ReadStats()))
    queries = np.concatenate([enc.encode("text", ["the digit four", "a spoken two"]),
                              enc.encode("image", [sample["image"]]), enc.encode("audio", [sample["audio"]])])
    for where in (None, {"modality": "image"}, {"split": ["val", "test"], "label": [1, 2, 3]}, ["modality=text"]):
        compare(milvus, faiss_store, queries, 8, where)
    assert milvus.search(queries[2:3], 1, {"modality": "image"})[0][0]["key"] == sample["key"]
    assert milvus.get(sample["key"]) == faiss_store.get(sample["key"])
    assert milvus.preview(sample["key"]) == faiss_store.preview(sample["key"])
    s, f = milvus.stats(), faiss_store.stats()
    assert {k: s[k] for k in ("n_items", "n_samples", "modalities", "splits", "fingerprint", "class_names")} == \
        {k: f[k] for k in ("n_items", "n_samples", "modalities", "splits", "fingerprint", "class_names")}


def test_commands_over_a_milvus_folder(tiny_run, digits_dir, tmp_path):
    out, db = tmp_path / "idx", tmp_path / "cli.db"
    runner = CliRunner()
    r = runner.invoke(app, ["index", "build", str(tiny_run), str(digits_dir), "--out", str(out), "--backend", "milvus",
                            "--uri", str(db), "--split", "test", "--collection", "cli_test"])
    assert r.exit_code == 0, r.output
    meta = json.loads((out / "meta.json").read_text())
    assert meta["backend"] == "milvus" and meta["uri"] == str(db) and meta["collection"] == "cli_test"
    assert "token" not in json.dumps(meta).lower()
    info = json.loads(runner.invoke(app, ["index", "info", str(out)]).output)
    assert info["n_items"] == 180 and info["backend"] == "milvus" and info["splits"] == {"test": 180}
    r = runner.invoke(app, ["search", str(out), "--text", "the digit four", "--json", "--k", "3",
                            "--where", "modality=image"])
    assert r.exit_code == 0 and [h["modality"] for h in json.loads(r.output)] == ["image"] * 3, r.output
    np.save(tmp_path / "v.npy", np.ones(16, np.float32))
    r = runner.invoke(app, ["search", str(out), "--vector", str(tmp_path / "v.npy"), "--json", "--k", "2"])
    assert r.exit_code == 0 and len(json.loads(r.output)) == 2, r.output
    key = json.loads(r.output)[0]["key"]
    r = runner.invoke(app, ["index", "delete", str(out), key, "--where", 'split=test" or split != "'])
    assert r.exit_code == 0 and "deleted 0 items" in r.output, r.output
    assert "deleted 3 items" in runner.invoke(app, ["index", "delete", str(out), key]).output
    r = runner.invoke(app, ["index", "add", str(out), str(digits_dir), "--split", "test"])
    assert r.exit_code != 0 and "already in the index" in r.output
    r = runner.invoke(app, ["index", "add", str(out), str(digits_dir), "--split", "test", "--replace"])
    assert r.exit_code == 0 and "added 180 items" in r.output, r.output
    assert open_store(out).n_items == 180
    r = runner.invoke(app, ["index", "build", str(tiny_run), str(digits_dir), "--out", str(tmp_path / "x"),
                            "--uri", str(db)])
    assert r.exit_code != 0 and "only with --backend milvus" in r.output


def test_fingerprint_lives_with_the_collection(tiny_run, digits_dir, tmp_path):
    out = tmp_path / "fp"
    build_index(tiny_run, digits_dir, out, ["val"], ["image"], backend="milvus", uri=str(tmp_path / "fp.db"))
    store = open_store(out)
    store.check_model(store.meta["fingerprint"])
    with pytest.raises(FingerprintError, match="not comparable"):
        store.check_model("0" * 64, "other-run")
    store.client.alter_collection_properties(alias_target(store.client, "fp"),  # as if rebuilt by another model
                                             properties={"jointspace.fingerprint": "0" * 64})
    with pytest.raises(FingerprintError):
        open_for_run(out, tiny_run)


def test_killed_build_leaves_the_previous_collection_live(tiny_run, digits_dir, tmp_path):
    out, db = tmp_path / "k", str(tmp_path / "k.db")
    build_index(tiny_run, digits_dir, out, ["val"], ["image"], backend="milvus", uri=db)
    store = open_store(out)
    before = alias_target(store.client, "k")
    close_clients(db)  # a Lite file admits one process at a time
    env = {**os.environ, SLOW_MILVUS_BUILD_ENV: "60"}
    proc = subprocess.Popen([sys.executable, "-m", "jointspace.cli", "index", "build", str(tiny_run), str(digits_dir),
                             "--out", str(out), "--overwrite", "--backend", "milvus", "--uri", db],
                            env=env, stderr=subprocess.PIPE, text=True)
    staged, said = False, []
    try:
        for line in proc.stderr:
            said.append(line)
            if line.startswith("staged"):
                staged = True  # rows are in the staging collection; the alias is not switched yet
                break
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
    store = open_store(out)
    assert alias_target(store.client, "k") == before and store.n_items == 60  # the old build still answers
    assert store.search(np.ones((1, 16), np.float32), 3)[0] and store.stats()["n_items"] == 60
    assert staged, "".join(said)[-3000:]
    # the staging collection, if the engine kept it (Milvus Lite drops what was not flushed), no alias names
    assert store.client.list_aliases()["aliases"] == ["k"]
    assert all(c == before or c.startswith("k__build_") for c in store.client.list_collections())
    build_index(tiny_run, digits_dir, out, ["test"], backend="milvus", uri=db, overwrite=True)
    store = open_store(out)
    assert store.n_items == 180 and store.client.list_collections() == [alias_target(store.client, "k")]


def test_lite_file_inside_the_folder_is_refused(tiny_run, digits_dir, tmp_path):
    with pytest.raises(IndexStoreError, match="cannot be inside the index folder"):
        build_index(tiny_run, digits_dir, tmp_path / "i", backend="milvus", uri=str(tmp_path / "i" / "m.db"))
    assert not Path(tmp_path / "i").exists()


def test_a_factory_string_means_the_same_index_on_both_backends():
    """HNSW<M>: FAISS's M and efConstruction at build, the efSearch the FAISS backend stores at search;
    IVF<nlist>,Flat: the same nlist."""
    import faiss

    from jointspace.index.bulk import default_search_params
    from jointspace.index.milvus_conn import index_spec

    kind, build, search = index_spec("HNSW16", 10_000)
    ref = faiss.index_factory(8, "HNSW16", faiss.METRIC_INNER_PRODUCT)
    assert kind == "HNSW" and build == {"M": 16, "efConstruction": ref.hnsw.efConstruction}
    assert search == {"ef": default_search_params(ref, "HNSW16")["efSearch"]}
    assert index_spec("IVF256,Flat", 10_000)[:2] == ("IVF_FLAT", {"nlist": 256})


def test_a_retried_create_index_that_finds_its_index_goes_on(tmp_path, caplog):
    """pymilvus sends a create_index again when a long build outlived its connection (seen at 1M vectors,
    HNSW, Milvus Lite): the second call finds the index and the build goes on; another type is refused."""
    from jointspace.index.milvus_conn import client, create_index_once, new_schema

    uri = str(tmp_path / "retry.db")
    cli = client(uri)
    cli.create_collection("retry", schema=new_schema(cli, 4), consistency_level="Strong")
    for kind, build in (("FLAT", {}), ("FLAT", {})):
        params = cli.prepare_index_params()
        params.add_index("vector", index_type=kind, metric_type="IP", params=build)
        create_index_once(cli, "retry", params, kind)
    assert not [r for r in caplog.records if "already exists" in r.getMessage()]  # pymilvus's own error log
    other = cli.prepare_index_params()
    other.add_index("vector", index_type="IVF_FLAT", metric_type="IP", params={"nlist": 4})
    with pytest.raises(IndexStoreError, match="already has a FLAT index"):
        create_index_once(cli, "retry", other, "IVF_FLAT")
    close_clients(uri)
