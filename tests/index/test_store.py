"""IndexStore on random vectors: add, search, filters, delete, atomic save, fingerprint refusal."""

from __future__ import annotations

import numpy as np
import pytest

from jointspace.index import reading as reading_mod
from jointspace.index import store as store_mod
from jointspace.index.filters import parse_where
from jointspace.index.store import FingerprintError, IndexStore, IndexStoreError

DIM = 16


def unit(n: int, seed: int = 0) -> np.ndarray:
    x = np.random.default_rng(seed).normal(size=(n, DIM)).astype(np.float32)
    return x / np.linalg.norm(x, axis=1, keepdims=True)


def items(n: int, start: int = 0) -> list[dict]:
    return [{"key": f"s{i:04d}", "modality": "image" if i % 2 else "text", "label": i % 5,
             "label_name": f"c{i % 5}", "caption": f"caption {i}", "source": f"shard.tar#s{i:04d}",
             "split": "test" if i % 3 == 0 else "train"} for i in range(start, start + n)]


def make(factory: str = "Flat", n: int = 300, search: dict | None = None) -> tuple[IndexStore, np.ndarray]:
    store = IndexStore.create(DIM, factory, {"fingerprint": "a" * 64}, search)
    vecs = unit(n)
    if store.needs_training:
        store.train(vecs)
    store.add(vecs, items(n), {"s0001": b"\x89PNG fake"})
    return store, vecs


def test_exact_search_finds_itself_sorted():
    store, vecs = make()
    hits = store.search(vecs[:5], k=4)
    assert [h[0]["key"] for h in hits] == ["s0000", "s0001", "s0002", "s0003", "s0004"]
    for row in hits:
        scores = [h["score"] for h in row]
        assert scores == sorted(scores, reverse=True) and len(row) == 4
    assert hits[0][0]["score"] == pytest.approx(1.0, abs=1e-5)
    assert hits[1][0]["has_thumbnail"] and not hits[0][0]["has_thumbnail"]
    assert store.search(vecs[:1], k=1000)[0].__len__() == 300  # k beyond n: every item once


@pytest.mark.parametrize("where,check", [
    ({"label": 3}, lambda h: h["label"] == 3),
    (["split=test"], lambda h: h["split"] == "test"),
    ({"modality": "image", "label": [1, 2]}, lambda h: h["modality"] == "image" and h["label"] in (1, 2)),
    (["label=4", "label=0", "split=train"], lambda h: h["label"] in (4, 0) and h["split"] == "train"),
])
def test_filters(where, check):
    store, vecs = make()
    for row in store.search(vecs[:10], k=10, where=where):
        assert len(row) == 10 and all(check(h) for h in row)


def test_filter_through_faiss_selector_matches_exact(monkeypatch):
    store, vecs = make("IVF8,Flat", n=400, search={"nprobe": 8})  # nprobe = nlist: exhaustive
    exact = store.search(vecs[:20], 5, where={"label": 2})
    monkeypatch.setattr(reading_mod, "EXACT_FILTER_MAX", 0)  # force the IDSelector path
    via_faiss = store.search(vecs[:20], 5, where={"label": 2})
    assert [[h["id"] for h in r] for r in via_faiss] == [[h["id"] for h in r] for r in exact]


def test_where_errors_name_the_key():
    with pytest.raises(IndexStoreError, match="unknown key 'colour'"):
        parse_where(["colour=red"])
    with pytest.raises(IndexStoreError, match="where label: expected a int"):
        parse_where({"label": "three"})
    with pytest.raises(IndexStoreError, match="expected key=value"):
        parse_where(["label"])
    with pytest.raises(IndexStoreError, match="got dict"):
        parse_where({"label": {"$gt": 2}})
    with pytest.raises(IndexStoreError, match="out of the 64-bit integer range"):
        parse_where({"label": 10**30})
    with pytest.raises(IndexStoreError, match="more than 100 values"):
        parse_where({"key": ["k"] * 2000})
    assert parse_where({"label": "3", "split": ["a", "b"]}) == {"label": [3], "split": ["a", "b"]}


@pytest.mark.parametrize("factory", ["Flat", "IVF8,Flat", "HNSW8"])
def test_delete_by_key_and_filter(factory):
    store, vecs = make(factory, search={"nprobe": 8})
    assert store.delete(keys=["s0000", "s0002"]) == 2
    assert store.delete(where={"label": 4}) == 60
    top = store.search(vecs[:3], k=5)
    assert all(h["key"] not in ("s0000", "s0002") and h["label"] != 4 for row in top for h in row)
    assert top[1][0]["key"] == "s0001" and all(len(r) == 5 for r in top)
    assert store.n_items == 238 and store.get("s0000") is None
    with pytest.raises(IndexStoreError, match="refusing to delete everything"):
        store.delete()


def test_duplicates_refused_unless_replace():
    store, vecs = make(n=20)
    with pytest.raises(IndexStoreError, match="already in the index .*s0003/image"):
        store.add(vecs[:5], items(5))
    store.add(-vecs[:5], items(5), replace=True)
    assert store.n_items == 20 and store.search(-vecs[:1], 1)[0][0]["key"] == "s0000"
    with pytest.raises(IndexStoreError, match=r"expected vectors \[2, 16\]"):
        store.add(vecs[:3], items(2, 100))


def test_save_open_roundtrip_and_get(tmp_path):
    store, vecs = make()
    store.save(tmp_path / "idx")
    again = IndexStore.open(tmp_path / "idx")
    assert again.n_items == 300 and again.meta["fingerprint"] == "a" * 64
    assert again.search(vecs[7:8], 1)[0][0]["key"] == "s0007"
    assert again.get("s0001") == {"key": "s0001", "label": 1, "label_name": "c1", "caption": "caption 1",
                                  "source": "shard.tar#s0001", "split": "train", "modalities": ["image"],
                                  "has_thumbnail": True}
    assert again.preview("s0001") == b"\x89PNG fake" and again.preview("s0000") is None
    assert again.stats()["modalities"] == {"image": 150, "text": 150}


def test_atomic_save_keeps_the_old_index_on_failure(tmp_path, monkeypatch):
    store, _ = make()
    path = store.save(tmp_path / "idx")
    store.delete(where={"label": 0})

    def boom(*args, **kwargs):
        raise OSError("disk full")

    monkeypatch.setattr(store_mod.faiss, "write_index", boom)
    with pytest.raises(OSError, match="disk full"):
        store.save()
    monkeypatch.undo()
    assert IndexStore.open(path).n_items == 300  # untouched
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["idx"]  # no temporary folders left
    store.save()
    assert IndexStore.open(path).n_items == 240
    assert sorted(p.name for p in tmp_path.iterdir() if p.is_dir()) == ["idx"]


def test_save_refuses_to_replace_a_foreign_folder(tmp_path):
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "notes.txt").write_text("keep me")
    store, _ = make(n=10)
    with pytest.raises(IndexStoreError, match="not a jointspace index; refusing"):
        store.save(tmp_path / "mine")
    assert (tmp_path / "mine" / "notes.txt").read_text() == "keep me"


def test_open_errors_name_the_folder(tmp_path):
    with pytest.raises(IndexStoreError, match=f"{tmp_path}: not a jointspace index"):
        IndexStore.open(tmp_path)


def test_fingerprint_refusal():
    store, _ = make(n=10)
    store.check_model("a" * 64)
    with pytest.raises(FingerprintError, match="built with model aaaaaaaaaaaa .* is model bbbbbbbbbbbb"):
        store.check_model("b" * 64, "runs/other")


def test_bad_factory_and_query_shape():
    with pytest.raises(IndexStoreError, match="factory 'NotAFactory'"):
        IndexStore.create(DIM, "NotAFactory")
    store, _ = make(n=10)
    with pytest.raises(IndexStoreError, match=r"queries must be \[Q, 16\]"):
        store.search(np.zeros((1, 8), np.float32), 3)


def test_search_survives_faiss_torch_utils(monkeypatch):
    """pytorch-metric-learning imports faiss.contrib.torch_utils, which swaps Index.search for a version
    without `params` in the whole process; filtered and compressed searches must still work after it."""
    import faiss.contrib.torch_utils  # noqa: F401 - the import is the test's condition

    store, vecs = make("IVF8,Flat", n=400, search={"nprobe": 8})
    monkeypatch.setattr(reading_mod, "EXACT_FILTER_MAX", 0)  # through FAISS with an IDSelector
    rows = store.search(vecs[:5], 3, where={"label": 2})
    assert all(len(r) == 3 and all(h["label"] == 2 for h in r) for r in rows)
    assert [r[0]["key"] for r in store.search(vecs[:3], 1)] == ["s0000", "s0001", "s0002"]
