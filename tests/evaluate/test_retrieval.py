"""Retrieval metrics against hand-worked cases and a dense reference implementation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointspace.evaluate.retrieval import retrieval_metrics, retrieval_report


def _t(rows: list[list[float]]) -> torch.Tensor:
    return torch.tensor(rows, dtype=torch.float64)


# Instance-level: query i's only positive is gallery i.
GALLERY_INST = _t([[1, 0], [0, 1], [0.6, 0.8], [-1, 0]])
QUERY_INST = _t([[1, 0], [0.8, 0.6], [0, 1], [0.6, 0.8]])
# q0=(1,0):     sims g0 1, g1 0, g2 .6, g3 -1    -> g0 is top            rank 1, AP 1
# q1=(.8,.6):   sims g0 .8, g1 .6, g2 .96, g3 -.8 -> g2, g0 above g1      rank 3, AP 1/3
# q2=(0,1):     sims g0 0, g1 1, g2 .8, g3 0     -> g1 above g2           rank 2, AP 1/2
# q3=(.6,.8):   sims g0 .6, g1 .8, g2 1, g3 -.6  -> everything above g3   rank 4, AP 1/4
# ranks [1, 3, 2, 4]: R@1 = 1/4, R@2 = 2/4, R@5 = 1, median 2.5, mean 2.5
# mAP@10 = (1 + 1/3 + 1/2 + 1/4) / 4 = (12 + 4 + 6 + 3) / 48 = 25/48


def test_instance_level_hand_worked() -> None:
    out = retrieval_metrics(QUERY_INST, GALLERY_INST, ks=(1, 2, 5), map_k=10)
    assert out["R@1"] == pytest.approx(1 / 4)
    assert out["R@2"] == pytest.approx(2 / 4)
    assert out["R@5"] == pytest.approx(1.0)
    assert out["mAP@10"] == pytest.approx(25 / 48)
    assert out["median_rank"] == pytest.approx(2.5)
    assert out["mean_rank"] == pytest.approx(2.5)
    assert out["n_queries"] == 4
    assert set(out) == {"R@1", "R@2", "R@5", "mAP@10", "median_rank", "mean_rank", "n_queries"}


def test_unique_labels_equal_instance_level() -> None:
    labels = torch.arange(4)
    assert retrieval_metrics(QUERY_INST, GALLERY_INST, labels, labels) == retrieval_metrics(
        QUERY_INST, GALLERY_INST
    )


def test_instance_level_needs_square() -> None:
    with pytest.raises(ValueError):
        retrieval_metrics(QUERY_INST[:3], GALLERY_INST)
    with pytest.raises(ValueError):
        retrieval_metrics(QUERY_INST, GALLERY_INST, query_labels=torch.arange(4))


# Class-level: 5 gallery items, 4 queries (the last has a label absent from the gallery).
GALLERY_CLS = _t([[1, 0], [0.8, 0.6], [0.6, 0.8], [0, 1], [-0.6, 0.8]])
GALLERY_CLS_LABELS = torch.tensor([0, 1, 0, 2, 1])
QUERY_CLS = _t([[1, 0], [0, 1], [0.6, 0.8], [1, 0]])
QUERY_CLS_LABELS = torch.tensor([0, 1, 2, 7])
# q0 (label 0): sims g0 1(+), g1 .8, g2 .6(+), g3 0, g4 -.6
#    order g0+ g1 g2+ g3 g4  -> first rank 1; AP@10 = (1/1 + 2/3) / min(2, 10) = 5/6
# q1 (label 1): sims g0 0, g1 .6(+), g2 .8, g3 1, g4 .8(+)  -- g2 and g4 tie at .8
#    ties favour the positive: order g3 g4+ g2 g1+ g0 -> first rank 2; AP@10 = (1/2 + 2/4) / 2 = 1/2
# q2 (label 2): sims g0 .6, g1 .96, g2 1, g3 .8(+), g4 .28
#    order g2 g1 g3+ g0 g4 -> first rank 3; AP@10 = (1/3) / 1 = 1/3
# q3 (label 7): no positive in the gallery -> excluded, n_queries = 3
# ranks [1, 2, 3]: R@1 = 1/3, R@2 = 2/3, R@5 = R@10 = 1, median 2, mean 2
# mAP@10 = (5/6 + 3/6 + 2/6) / 3 = 5/9
# mAP@2: q0 top2 = g0+ g1 -> (1/1) / min(2, 2) = 1/2; q1 top2 = g3 g4+ -> (1/2) / 2 = 1/4;
#        q2 top2 = g2 g1 -> 0; mean = (1/2 + 1/4 + 0) / 3 = 1/4


def test_class_level_hand_worked() -> None:
    out = retrieval_metrics(QUERY_CLS, GALLERY_CLS, QUERY_CLS_LABELS, GALLERY_CLS_LABELS, ks=(1, 2, 5, 10))
    assert out["R@1"] == pytest.approx(1 / 3)
    assert out["R@2"] == pytest.approx(2 / 3)
    assert out["R@5"] == pytest.approx(1.0)
    assert out["R@10"] == pytest.approx(1.0)
    assert out["mAP@10"] == pytest.approx(5 / 9)
    assert out["median_rank"] == pytest.approx(2.0)
    assert out["mean_rank"] == pytest.approx(2.0)
    assert out["n_queries"] == 3


def test_class_level_map_at_2_normalises_by_min_npos_k() -> None:
    out = retrieval_metrics(QUERY_CLS, GALLERY_CLS, QUERY_CLS_LABELS, GALLERY_CLS_LABELS, map_k=2)
    assert out["mAP@2"] == pytest.approx(1 / 4)


def test_query_without_positive_is_excluded() -> None:
    with_orphan = retrieval_metrics(QUERY_CLS, GALLERY_CLS, QUERY_CLS_LABELS, GALLERY_CLS_LABELS)
    without = retrieval_metrics(QUERY_CLS[:3], GALLERY_CLS, QUERY_CLS_LABELS[:3], GALLERY_CLS_LABELS)
    assert with_orphan == without
    only_orphan = retrieval_metrics(QUERY_CLS[3:], GALLERY_CLS, QUERY_CLS_LABELS[3:], GALLERY_CLS_LABELS)
    assert only_orphan["n_queries"] == 0
    assert np.isnan(only_orphan["R@1"]) and np.isnan(only_orphan["mAP@10"])


def test_positive_tied_outside_topk_counts() -> None:
    # All three gallery items tie; the positive (index 2) may fall outside topk(1) but ties favour it.
    gallery = _t([[1, 0], [1, 0], [1, 0]])
    query = _t([[1, 0]])
    out = retrieval_metrics(query, gallery, torch.tensor([5]), torch.tensor([0, 1, 5]), ks=(1,), map_k=1)
    assert out == {"R@1": 1.0, "mAP@1": 1.0, "median_rank": 1.0, "mean_rank": 1.0, "n_queries": 1.0}


def _dense_reference(
    query: np.ndarray,
    gallery: np.ndarray,
    q_lab: np.ndarray,
    g_lab: np.ndarray,
    ks: tuple[int, ...],
    k_map: int,
) -> dict[str, float]:
    """Full Nq x Ng sort; ties ordered positives-first (the documented convention)."""
    sim = query @ gallery.T
    pos = q_lab[:, None] == g_lab[None, :]
    ranks, aps = [], []
    for i in range(len(query)):
        if not pos[i].any():
            continue
        order = np.lexsort((~pos[i], -sim[i]))  # primary: sim descending; ties: positives first
        rel = pos[i][order]
        ranks.append(int(np.argmax(rel)) + 1)
        rel_k = rel[:k_map].astype(float)
        prec = np.cumsum(rel_k) / np.arange(1, len(rel_k) + 1)
        aps.append(float((prec * rel_k).sum() / min(pos[i].sum(), k_map)))
    r = np.array(ranks)
    out = {f"R@{k}": float((r <= k).mean()) for k in ks}
    out[f"mAP@{k_map}"] = float(np.mean(aps))
    out["median_rank"] = float(np.median(r))
    out["mean_rank"] = float(r.mean())
    out["n_queries"] = float(len(r))
    return out


@pytest.mark.parametrize("level", ["instance", "class", "class_with_ties"])
def test_matches_dense_reference_and_chunking_is_invariant(level: str) -> None:
    gen = torch.Generator().manual_seed(0)
    n, d = 300, 16
    query = torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(n, d, generator=gen, dtype=torch.float64), dim=1)
    if level == "class_with_ties":  # coarse integer embeddings -> many exactly tied similarities
        query = torch.randint(-1, 2, (n, 3), generator=gen).double()
        gallery = torch.randint(-1, 2, (n, 3), generator=gen).double()
    if level == "instance":
        q_lab = g_lab = None
        q_np, g_np = np.arange(n), np.arange(n)
    else:
        q_lab = torch.randint(0, 25, (n,), generator=gen)
        g_lab = torch.randint(0, 20, (n,), generator=gen)  # labels 20..24 have no positives
        q_np, g_np = q_lab.numpy(), g_lab.numpy()
    ks = (1, 5, 10)
    small = retrieval_metrics(query, gallery, q_lab, g_lab, ks=ks, map_k=10, chunk_size=1)
    big = retrieval_metrics(query, gallery, q_lab, g_lab, ks=ks, map_k=10, chunk_size=1000)
    mid = retrieval_metrics(query, gallery, q_lab, g_lab, ks=ks, map_k=10, chunk_size=7)
    assert small == big == mid
    ref = _dense_reference(query.numpy(), gallery.numpy(), q_np, g_np, ks, 10)
    assert set(big) == set(ref)
    for key, value in ref.items():
        assert big[key] == pytest.approx(value, rel=1e-12, abs=1e-12), key
    if level != "instance":
        assert big["n_queries"] < n


def test_float32_input_matches_float64() -> None:
    gen = torch.Generator().manual_seed(1)
    query = torch.nn.functional.normalize(torch.randn(50, 8, generator=gen), dim=1)
    gallery = torch.nn.functional.normalize(torch.randn(50, 8, generator=gen), dim=1)
    out32 = retrieval_metrics(query, gallery, chunk_size=16)
    out64 = retrieval_metrics(query.double(), gallery.double(), chunk_size=16)
    for key in out64:
        assert out32[key] == pytest.approx(out64[key], abs=1e-6), key


def test_report_all_ordered_pairs_and_subset() -> None:
    gen = torch.Generator().manual_seed(2)
    emb = {
        m: torch.nn.functional.normalize(torch.randn(20, 4, generator=gen), dim=1) for m in ("a", "b", "c")
    }
    labels = torch.randint(0, 3, (20,), generator=gen)
    report = retrieval_report(emb, labels, ks=(1, 5))
    assert set(report) == {"a->b", "a->c", "b->a", "b->c", "c->a", "c->b"}
    assert report["b->c"] == retrieval_metrics(emb["b"], emb["c"], labels, labels, ks=(1, 5))
    subset = retrieval_report(emb, None, pairs=[("c", "a")])
    assert list(subset) == ["c->a"]
    assert subset["c->a"] == retrieval_metrics(emb["c"], emb["a"])
    with pytest.raises(KeyError):
        retrieval_report(emb, None, pairs=[("a", "z")])
