"""Compressed indexes (IVF-PQ fast scan) with exact vectors on disk: the factory tiers, the chunked
build, the exact re-ranking, copy-on-write appends, deletes, filters and a damaged vectors file."""

from __future__ import annotations

import numpy as np
import pytest

from jointspace.index import store as store_mod
from jointspace.index.bulk import build_store, choose_factory, new_store
from jointspace.index.store import IndexStore, IndexStoreError
from jointspace.index.vectors import VECTORS_FILE

DIM, N, FACTORY = 32, 3000, "IVF8,PQ8x4fs"


def data(n: int = N, seed: int = 0) -> np.ndarray:
    """Unit vectors around 20 centres, each cluster spread in its own 4-d subspace."""
    rng = np.random.default_rng(seed)
    centres = rng.normal(size=(20, DIM))
    basis = rng.normal(size=(20, 4, DIM)) / np.sqrt(DIM)
    lab = np.random.default_rng(seed + 1).integers(0, 20, n)
    x = centres[lab] + np.einsum("nr,nrd->nd", np.random.default_rng(seed + 2).normal(size=(n, 4)), basis[lab])
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def items(n: int, start: int = 0) -> list[dict]:
    return [{"key": f"v{i:05d}", "modality": "vector", "label": i % 7, "split": "a" if i % 2 else "b"}
            for i in range(start, start + n)]


def chunks(x: np.ndarray, size: int = 700):
    for s in range(0, len(x), size):
        yield x[s : s + size], items(len(x[s : s + size]), s), {}


def exact_top(x: np.ndarray, q: np.ndarray, k: int) -> np.ndarray:
    return np.argsort(-(q @ x.T), axis=1, kind="stable")[:, :k]


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    x = data()
    store = build_store(chunks(x), FACTORY, {"fingerprint": "f" * 64}, scratch_dir=tmp_path_factory.mktemp("s"))
    path = store.save(tmp_path_factory.mktemp("idx") / "index")
    return x, store, path


def test_the_factory_compresses_from_two_million_vectors():
    assert choose_factory(1_999_999) == "IVF4096,Flat"
    assert choose_factory(2_000_000) == "IVF1024,PQ64x4fs"
    assert choose_factory(10_000_000) == "IVF4096,PQ64x4fs"
    assert choose_factory(10_000_000, dim=100) == "IVF4096,PQ25x4fs"  # m divides the dimension


def test_chunked_build_equals_the_in_memory_build(built):
    x, store, _ = built
    whole = new_store(x, FACTORY, {"fingerprint": "f" * 64})
    whole.add(x, items(len(x)))
    q = data(50, seed=9)
    a, b = store.nearest(q, 10), whole.nearest(q, 10)
    np.testing.assert_array_equal(a[1], b[1])
    np.testing.assert_allclose(a[0], b[0], rtol=1e-6)
    assert store.meta["refine"] == {"k_factor": 8} and store.exact.n == N


def test_scores_are_exact_and_all_candidates_give_exact_search(built):
    x, store, _ = built
    q = data(40, seed=5)
    scores, ids = store.nearest(q, 10, k_factor=1)  # re-ranked codes: the scores are exact inner products
    np.testing.assert_allclose(scores, np.einsum("qd,qkd->qk", q, x[ids]), rtol=1e-5, atol=1e-6)
    scores, ids = store.nearest(q, 10, nprobe=8, k_factor=N)  # every list, every vector re-ranked
    np.testing.assert_array_equal(ids, exact_top(x, q, 10))
    coded = store.index.search(q, 10)[1]  # the codes alone, without the re-ranking
    recall = lambda found: np.mean([len(set(f) & set(t)) / 10 for f, t in zip(found, exact_top(x, q, 10))])
    assert recall(store.nearest(q, 10)[1]) > recall(coded) + 0.1


def test_saved_and_opened_it_searches_the_same_and_reports_its_memory(built):
    _, store, path = built
    assert (path / VECTORS_FILE).stat().st_size == N * DIM * 4
    opened = IndexStore.open(path)
    q = data(30, seed=3)
    np.testing.assert_array_equal(opened.nearest(q, 5)[1], store.nearest(q, 5)[1])
    mem = opened.memory()
    assert mem["exact_vectors_bytes"] == N * DIM * 4
    assert 0 < mem["faiss_bytes"] < N * DIM * 4 / 2  # 4-byte codes and ids instead of 128-byte vectors
    assert mem["items_in"] == "ram" and mem["rss_bytes"] > 0


def test_appends_copy_the_saved_vectors_before_writing(built, tmp_path):
    _, _, path = built
    opened = IndexStore.open(path)
    new = data(60, seed=11)
    opened.add(new, items(60, N))
    assert (path / VECTORS_FILE).stat().st_size == N * DIM * 4  # the saved version is untouched
    saved = opened.save(tmp_path / "grown")
    again = IndexStore.open(saved)
    assert again.exact.n == N + 60
    hits = again.search(new[:5], 1, nprobe=8)
    assert [h[0]["key"] for h in hits] == [f"v{N + i:05d}" for i in range(5)]


def test_deletes_and_filters_on_compressed_codes(built):
    x, _, path = built
    store = IndexStore.open(path)
    q = x[:3]
    assert [h[0]["key"] for h in store.search(q, 1, nprobe=8, k_factor=200)] == ["v00000", "v00001", "v00002"]
    assert store.delete(keys=["v00000", "v00001"]) == 2
    assert store.index.ntotal == N - 2
    found = {h["key"] for row in store.search(q, 3, nprobe=8, k_factor=200) for h in row}
    assert not found & {"v00000", "v00001"} and "v00002" in found
    hits = store.search(q, 5, where={"label": 3})  # few enough items: exact search on the stored vectors
    for row in hits:
        assert {h["label"] for h in row} == {3}
        assert all(abs(h["score"] - float(x[h["id"]] @ q[hits.index(row)])) < 1e-5 for h in row)


def test_a_large_item_table_is_worked_on_in_a_scratch_file(built, monkeypatch):
    _, _, path = built
    monkeypatch.setattr(store_mod, "DB_MEMORY_MAX", 0)
    store = IndexStore.open(path)
    assert store.memory()["items_in"] == "scratch file"
    assert store.n_items == N and store.get("v00042")["label"] == 0


def test_a_truncated_vectors_file_is_refused(built, tmp_path):
    import shutil

    _, _, path = built
    copy = tmp_path / "cut"
    shutil.copytree(path, copy)
    with open(copy / VECTORS_FILE, "r+b") as f:
        f.truncate(1000)
    with pytest.raises(IndexStoreError, match="vectors.f32: 1000 bytes, expected at least 384000"):
        IndexStore.open(copy)


def test_duplicate_keys_across_chunks_are_refused(tmp_path):
    x = data(100)
    twice = [(x[:50], items(50), {}), (x[50:], items(50), {})]
    with pytest.raises(IndexStoreError, match="appears twice"):
        build_store(iter(twice), FACTORY, scratch_dir=tmp_path)
