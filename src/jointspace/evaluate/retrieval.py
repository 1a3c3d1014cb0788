"""Chunked cross-modal retrieval metrics: Recall@K, mAP@K and rank statistics.

Similarity is the dot product (embeddings are assumed L2-normalised). Queries are processed in
chunks of ``chunk_size`` rows so memory stays O(chunk_size * Ng); the full Nq x Ng similarity
matrix is never built.

Tie convention (deterministic, independent of gallery order): a positive's rank is
``1 + number of gallery items with strictly greater similarity``. Equivalently, within a group of
tied similarities positives are ordered before negatives, so ties resolve in the positive's favour.
mAP@K uses the same ordering, so ``R@1`` and the first term of AP always agree.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import torch
from torch import Tensor

from jointspace.errors import UsageError

__all__ = ["retrieval_metrics", "retrieval_report"]
# query rows multiplied at once are capped at BLOCK_ROWS (the matrix product is near its best from 256
# rows on, and a smaller block keeps the passes after it in cache); each row's top TOP_K similarities
# are selected once, and only rows without a positive among them are scanned again in full
BLOCK_ROWS = 256
TOP_K = 128


class _Positives:
    """Which gallery items are positives of which queries: the same label, or (no labels) the same index."""

    def __init__(self, query_labels: Tensor | None, gallery_labels: Tensor | None, n_gallery: int,
                 device: torch.device):
        self.query_labels, self.gallery_labels = query_labels, gallery_labels
        self.gallery = gallery_labels if gallery_labels is not None else torch.arange(n_gallery, device=device)
        if gallery_labels is not None:
            self.classes, self.per_class = torch.unique(gallery_labels, return_counts=True)

    def _own(self, rows: Tensor) -> Tensor:
        """What a gallery item must equal to be a positive of these query rows (absolute indices)."""
        return self.query_labels[rows] if self.query_labels is not None else rows

    def count(self, rows: Tensor) -> Tensor:
        """Number of positives of each query row: [r]."""
        if self.query_labels is None:
            return torch.ones(len(rows), dtype=torch.long, device=rows.device)
        own = self._own(rows)
        at = torch.searchsorted(self.classes, own).clamp(max=len(self.classes) - 1)
        return torch.where(self.classes[at] == own, self.per_class[at], 0)

    def among(self, rows: Tensor, idx: Tensor) -> Tensor:
        """Boolean positives of query rows among gallery items `idx` [r, K]: [r, K]."""
        return self.gallery[idx] == self._own(rows).unsqueeze(1)

    def full(self, rows: Tensor) -> Tensor:
        """Boolean positives of query rows against the whole gallery: [r, Ng]."""
        return self.gallery.unsqueeze(0) == self._own(rows).unsqueeze(1)


def _ranks_from_top(top_sim: Tensor, top_rel: Tensor) -> tuple[Tensor, Tensor]:
    """First-positive ranks of rows whose best positive is among their top K, read off the top K alone
    (every item above a top-K value is itself in the top K); returns (ranks [c], found [c])."""
    found = top_rel.any(dim=1)
    best = top_sim.masked_fill(~top_rel, -math.inf).amax(dim=1, keepdim=True)
    return 1 + (top_sim > best).sum(dim=1), found


def _average_precision_at_k(top_sim: Tensor, top_rel: Tensor, n_pos: Tensor, boundary_pos: Tensor,
                            k: int) -> Tensor:
    """AP@k per row from its top-k, with positives-first tie-breaking: [c]. `boundary_pos`: positives in
    the whole row tied with its k-th value (the last tie group may continue past position k)."""
    top_sim, top_rel = top_sim[:, :k], top_rel[:, :k]
    # topk's order inside a tie group is arbitrary; recompute relevance per position as if each tie
    # group were sorted positives-first. Every item strictly above top_sim[:, i] lies inside the top-k,
    # so group starts and (non-boundary) group positive counts can be read off the top-k alone.
    group_start = (top_sim.unsqueeze(1) > top_sim.unsqueeze(2)).sum(dim=2)  # [c, k]
    same_group = top_sim.unsqueeze(1) == top_sim.unsqueeze(2)  # [c, k, k]
    group_pos = (same_group & top_rel.unsqueeze(1)).sum(dim=2)  # [c, k]
    group_pos = torch.where(top_sim == top_sim[:, -1:], boundary_pos.unsqueeze(1), group_pos)
    position = torch.arange(k, device=top_sim.device).unsqueeze(0)  # [1, k]
    rel = (position - group_start < group_pos).to(top_sim.dtype)  # [c, k]
    precision = rel.cumsum(dim=1) / (position + 1)  # P@1..P@k
    denom = n_pos.clamp(min=1, max=k).to(top_sim.dtype)
    return (precision * rel).sum(dim=1) / denom


def _chunk_scores(sim: Tensor, positives: _Positives, rows: Tensor, n_pos: Tensor, k_top: int,
                  k_ap: int) -> tuple[Tensor, Tensor]:
    """(first-positive ranks, AP@k_ap) of one chunk's query rows (absolute indices `rows`): one top-K
    selection over the similarity rows; only rows whose best positive lies below the top K, or whose
    k_ap-th value ties past position k_ap, are scanned in full."""
    top_sim, top_idx = sim.topk(k_top, dim=1)  # [c, K], sorted descending
    top_rel = positives.among(rows, top_idx)  # [c, K]
    ranks, found = _ranks_from_top(top_sim, top_rel)
    boundary = top_sim[:, k_ap - 1]
    boundary_pos = (top_rel[:, :k_ap] & (top_sim[:, :k_ap] == boundary.unsqueeze(1))).sum(dim=1)
    crosses = (top_sim[:, k_ap] == boundary) if k_top > k_ap else torch.zeros_like(found)
    full = torch.nonzero((~found | crosses) & (n_pos > 0)).squeeze(1)
    if full.numel():
        scanned, pos = sim[full], positives.full(rows[full])
        best = scanned.masked_fill(~pos, -math.inf).amax(dim=1, keepdim=True)
        ranks[full] = 1 + torch.sum(torch.gt(scanned, best), dim=1, dtype=torch.int32).long()
        boundary_pos[full] = (pos & (scanned == boundary[full].unsqueeze(1))).sum(dim=1)
    return ranks, _average_precision_at_k(top_sim, top_rel, n_pos, boundary_pos, k_ap)


def _median(values: Tensor) -> float:
    """Median that averages the two middle values for even lengths (numpy convention)."""
    ordered = values.sort().values
    n = ordered.numel()
    return float(ordered[(n - 1) // 2] + ordered[n // 2]) / 2.0


def _check_inputs(query_emb: Tensor, gallery_emb: Tensor, query_labels: Tensor | None,
                  gallery_labels: Tensor | None, ks: Sequence[int], map_k: int, chunk_size: int) -> None:
    """ValueError naming what is wrong with the shapes, labels or settings of a retrieval call."""
    if query_emb.ndim != 2 or gallery_emb.ndim != 2 or query_emb.shape[1] != gallery_emb.shape[1]:
        raise UsageError(
            f"expected [Nq, D] and [Ng, D], got {tuple(query_emb.shape)}, {tuple(gallery_emb.shape)}"
        )
    if (query_labels is None) != (gallery_labels is None):
        raise UsageError("pass both query_labels and gallery_labels, or neither")
    if chunk_size < 1 or map_k < 1 or any(k < 1 for k in ks):
        raise UsageError("chunk_size, map_k and every k must be >= 1")
    n_query, n_gallery = query_emb.shape[0], gallery_emb.shape[0]
    if query_labels is None and n_query != n_gallery:
        raise UsageError(f"instance-level retrieval needs Nq == Ng, got {n_query} and {n_gallery}")
    if query_labels is not None and (query_labels.shape != (n_query,) or gallery_labels.shape != (n_gallery,)):
        raise UsageError("labels must be 1-D and match the number of embeddings")


def retrieval_metrics(
    query_emb: Tensor,
    gallery_emb: Tensor,
    query_labels: Tensor | None = None,
    gallery_labels: Tensor | None = None,
    ks: Sequence[int] = (1, 5, 10),
    map_k: int = 10,
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@k, mAP@map_k, median/mean first-positive rank of queries [Nq, D] against a gallery [Ng, D].

    With labels, gallery item j is a positive for query i iff their labels are equal (class-level; a
    query hits at k if any positive is in its top-k). Without labels, query i's only positive is gallery
    item i (instance-level; requires Nq == Ng). Queries with no positive are excluded from every metric;
    ``n_queries`` reports how many were scored. See the module docstring for the tie convention.
    """
    _check_inputs(query_emb, gallery_emb, query_labels, gallery_labels, ks, map_k, chunk_size)
    n_query, n_gallery = query_emb.shape[0], gallery_emb.shape[0]
    device = query_emb.device
    if query_labels is not None:
        query_labels, gallery_labels = query_labels.to(device), gallery_labels.to(device)

    dtype = torch.float64 if query_emb.dtype == torch.float64 else torch.float32
    gallery = gallery_emb.to(device=device, dtype=dtype)
    k_ap = min(map_k, n_gallery)
    k_top = min(max(max(ks, default=1) + 1, k_ap + 1, TOP_K), n_gallery)  # past k_ap: a tie crossing it shows
    positives = _Positives(query_labels, gallery_labels, n_gallery, device)
    ranks, aps = [], []
    step = min(chunk_size, BLOCK_ROWS)
    for start in range(0, n_query, step):
        query = query_emb[start : start + step].to(dtype)  # [c, D]
        rows = torch.arange(start, start + query.shape[0], device=device)
        n_pos = positives.count(rows)
        rank, ap = _chunk_scores(query @ gallery.T, positives, rows, n_pos, k_top, k_ap)
        valid = n_pos > 0
        ranks.append(rank[valid].cpu())
        aps.append(ap[valid].cpu())
    return _summary(ranks, aps, ks, map_k)


def _summary(ranks: list[Tensor], aps: list[Tensor], ks: Sequence[int], map_k: int) -> dict[str, float]:
    """Recall@k, mAP, median and mean rank over the scored queries' first-positive ranks and APs."""
    rank = torch.cat(ranks) if ranks else torch.zeros(0, dtype=torch.long)  # [Nq_valid]
    ap_all = torch.cat(aps) if aps else torch.zeros(0, dtype=torch.float64)
    n_valid = rank.numel()
    out: dict[str, float] = {}
    if n_valid == 0:
        out.update({f"R@{k}": math.nan for k in ks})
        out.update({f"mAP@{map_k}": math.nan, "median_rank": math.nan, "mean_rank": math.nan})
    else:
        out.update({f"R@{k}": float((rank <= k).double().mean()) for k in ks})
        out[f"mAP@{map_k}"] = float(ap_all.double().mean())
        out["median_rank"] = _median(rank.double())
        out["mean_rank"] = float(rank.double().mean())
    out["n_queries"] = float(n_valid)
    return out


def retrieval_report(
    emb: dict[str, Tensor],
    labels: Tensor | None,
    pairs: Iterable[tuple[str, str]] | None = None,
    variants: dict[str, tuple[Tensor, Tensor]] | None = None,
    **kw: object,
) -> dict[str, dict[str, float]]:
    """Retrieval metrics keyed "a->b" for every ordered modality pair (or just ``pairs``).

    ``emb`` maps modality name to paired embeddings [N, D] (row i of every modality is the same item);
    ``labels`` [N] are shared across modalities (None: instance-level). ``variants[m]`` = (embeddings
    [M, D] of every value, owner item [M]) for a modality whose items have several values (captions):
    CLIP_benchmark's rule, an item -> m query hits if any of its values is in the top k, an m -> item
    query (one per value) if its item is. ``kw`` goes to retrieval_metrics.
    """
    if pairs is None:
        pairs = [(a, b) for a in emb for b in emb if a != b]
    variants = variants or {}
    n = len(next(iter(emb.values()))) if emb else 0
    report: dict[str, dict[str, float]] = {}
    for a, b in pairs:
        if a not in emb or b not in emb:
            raise KeyError(f"unknown modality in pair ({a!r}, {b!r}); have {sorted(emb)}")
        if a not in variants and b not in variants:
            report[f"{a}->{b}"] = retrieval_metrics(emb[a], emb[b], labels, labels, **kw)  # type: ignore[arg-type]
            continue
        (qa, la), (gb, lb) = _side(a, emb, labels, variants, n), _side(b, emb, labels, variants, n)
        report[f"{a}->{b}"] = retrieval_metrics(qa, gb, la, lb, **kw)  # type: ignore[arg-type]
    return report


def _side(m: str, emb: dict[str, Tensor], labels: Tensor | None, variants: dict[str, tuple[Tensor, Tensor]],
          n: int) -> tuple[Tensor, Tensor]:
    """A modality's embeddings and the labels that make its positives: its items' (instance: their
    index), or, for variants, their owners'."""
    own = torch.arange(n) if labels is None else labels
    if m in variants:
        values, owner = variants[m]
        return values, own.to(owner.device)[owner]
    return emb[m], own
