"""The audit's findings: one row per suspect sample, and the finders that only need the joint space
(exact and near duplicates, leaks, mismatched pairs, outliers). Label issues: `labels.py`."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np

from jointspace.audit.neighbours import knn, make_index, pairs_above, partner_ranks
from jointspace.audit.space import TRAIN, Space

DUPLICATE, NEAR, LEAK, MISMATCH, LABEL, OUTLIER = "duplicate", "near_duplicate", "leak", "mismatch", "label", "outlier"
ISSUES = (DUPLICATE, NEAR, LEAK, MISMATCH, LABEL, OUTLIER)
ALL = "all"  # the modality of a finding about whole samples


@dataclass
class Finding:
    """One suspect sample: the issue, a score (higher: more suspect), the sample it pairs with (a duplicate's
    original, a leak's train sample, the sample whose partner a mismatched one matches), and its split."""

    key: str
    issue: str
    score: float
    split: str
    partner_key: str = ""
    partner_split: str = ""
    modality: str = ALL
    label: str = ""
    suggested: str = ""
    detail: dict = field(default_factory=dict)

    def row(self) -> dict:
        out = asdict(self)
        out["score"] = round(float(self.score), 6)
        return out


def _pair_finding(space: Space, i: int, j: int, issue: str, score: float, modality: str = ALL,
                  **detail) -> Finding:
    """A finding about the pair (i, j), i < j: a leak names the sample outside train, else the later one."""
    si, sj = space.splits[i], space.splits[j]
    if (si == TRAIN) != (sj == TRAIN):
        issue = LEAK
        i, j = (j, i) if si == TRAIN else (i, j)
        key, partner = i, j
    else:
        key, partner = j, i
    return Finding(space.keys[key], issue, score, str(space.splits[key]), space.keys[partner],
                   str(space.splits[partner]), modality, space.class_name(int(space.labels[key])), detail=detail)


def sample_hashes(space: Space) -> np.ndarray:
    """One digest per sample: its modalities' content hashes together."""
    return np.array(["|".join(h) for h in zip(*(space.hashes[m] for m in space.modalities))], dtype=object)


def exact_duplicates(space: Space) -> tuple[list[Finding], dict]:
    """Samples identical in every modality to an earlier one (content hashes), within and across splits;
    and per modality, how many values occur more than once."""
    first: dict[str, int] = {}
    found = []
    for row, digest in enumerate(sample_hashes(space)):
        if digest in first:
            found.append(_pair_finding(space, first[digest], row, DUPLICATE, 1.0, exact=True))
        else:
            first[digest] = row
    per_modality = {}
    for m, hashes in space.hashes.items():
        _, counts = np.unique(hashes.astype(str), return_counts=True)
        per_modality[m] = {"repeated_values": int((counts > 1).sum()), "samples_with_a_repeat": int(counts[counts > 1].sum())}
    return found, per_modality


NEAR_K = 16  # neighbours looked at for near duplicates
CONTENT_THRESHOLD = 0.999  # cosine of two values' content vectors, in every modality that has them


def joint_neighbours(space: Space, k: int = NEAR_K, make: Callable = make_index) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's k nearest others in the joint space (one search shared by the finders, in the index
    `make(vectors, seed)` makes: FAISS by default, or `audit.search.NeighbourSearch.index`)."""
    joint = space.joint()
    return knn(joint, k, make(joint, 0))


def near_duplicates(space: Space, threshold: float, neighbours: tuple[np.ndarray, np.ndarray] | None = None,
                    ratio: float = 0.1, k: int = 10, content: dict[str, np.ndarray] | None = None,
                    content_threshold: float = CONTENT_THRESHOLD) -> list[Finding]:
    """Pairs (not identical in every modality) whose cosine is at least `threshold` in every modality and
    whose joint-space distance is at most `ratio` times the smaller of the two samples' distances to their
    k-th nearest neighbour: a copy stands out from its neighbourhood even where a class is packed tight.
    Found among the nearest neighbours in the joint space (a FAISS index); score: the lowest cosine.
    `content`: per modality, the samples' content vectors (`audit.content`): where the space has them, a
    pair must also be near in content (cosine at least `content_threshold` in each): a run places distinct
    values its loss treats alike (one caption, one class) together, and content tells copies from them."""
    sims, rows = neighbours or joint_neighbours(space)
    i, j, cos = pairs_above(space.joint(), threshold, (sims, rows))
    kth = 1.0 - sims[:, min(k, sims.shape[1]) - 1]
    lowest = lowest_cosine([space.emb[m] for m in space.modalities], i, j)
    keep = (lowest >= threshold) & (1.0 - cos <= ratio * np.minimum(kth[i], kth[j]))
    if content:
        keep &= lowest_cosine(list(content.values()), i, j) >= content_threshold
    return near_findings(space, i[keep], j[keep], lowest[keep], exact=False, by="joint space")


def lowest_cosine(vectors: list[np.ndarray], i: np.ndarray, j: np.ndarray) -> np.ndarray:
    """Per pair (i[n], j[n]): the lowest cosine of its two rows over `vectors` (one [N, D] unit array each)."""
    return np.min([np.einsum("nd,nd->n", v[i], v[j]) for v in vectors], axis=0)


def near_findings(space: Space, i: np.ndarray, j: np.ndarray, score: np.ndarray, **detail) -> list[Finding]:
    """A near duplicate (or leak) finding for each pair (i[n], j[n]) that is not identical in every modality
    (those are exact duplicates), scored `score[n]`, with `detail`."""
    same = sample_hashes(space)
    return [_pair_finding(space, a, b, NEAR, low, **detail)
            for a, b, low in zip(i.tolist(), j.tolist(), score.tolist()) if same[a] != same[b]]


MISMATCH_MARGIN = math.log(10)  # nats: the beating candidates are each at least 10 times likelier
CLASS_EVIDENCE = math.log(30)  # nats: the margin and the class margin together, where the space has labels
BEATEN_BY = 3  # candidates that must beat the own partner by the margin (one or two lookalikes do not count)
CLASS_PAIRED = 0.25  # a typical own partner trailing this share of its class's values or more: pairs made by class


def mismatch_scores(space: Space, a: str, b: str, make: Callable = make_index, beaten_by: int = BEATEN_BY,
                    ranked_from: float | np.ndarray = -np.inf) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every sample, within its split: the margin by which its `beaten_by`-th best candidate of `b` (more
    where the split's pairs are made by class: `beaten_by_in`) beats its own `b` for its `a`, and the same from `b` to `a`, the smaller of the two (both ways must be
    wrong; 0 or below: the own partner is among the best); the row whose `b` its `a` matches best; and the
    rank share of its own `b` (the share of candidates that beat it, the larger of the two ways; estimated
    on a random 4096 in larger splits; only where the margin is at least `ranked_from`, one bar or a bar per
    sample, else 0).

    The margin is in the run's logits, logit scale x cosine (SigLIP's bias cancels in the difference; a loss
    without a learned scale, triplet or a pytorch-metric-learning one, has the constant scale the model was
    built with, 1 / init_temperature). A margin of m nats: under a softmax over the candidates, each of those
    candidates is e^m times likelier than the own partner. Identical values (digits' captions of one template)
    tie with the own partner; values of one class that differ (recordings of one spoken digit) can beat it.
    Above 50k samples a split is searched through IVF (approximate): a margin can come out smaller, never
    larger, than exact search gives."""
    n = len(space)
    margin, share = np.zeros(n), np.zeros(n)
    best = np.zeros(n, dtype=np.int64)
    bar = np.broadcast_to(ranked_from, (n,))
    for split in dict.fromkeys(space.splits.tolist()):
        rows = np.flatnonzero(space.splits == split)
        ea, eb = space.emb[a][rows], space.emb[b][rows]
        k = beaten_by_in(ea, eb, space.labels[rows] if space.classed else None, beaten_by)
        margin[rows], best_b, share[rows] = group_margins(ea, eb, space.logit_scale, make, k, bar[rows])
        best[rows] = rows[best_b]
    return margin, best, share


def beaten_by_in(ea: np.ndarray, eb: np.ndarray, labels: np.ndarray | None = None, beaten_by: int = BEATEN_BY,
                 sample: int = 1024, seed: int = 0) -> int:
    """How many candidates must beat an own partner among the pairs (ea[i], eb[i]) of one group: `beaten_by`,
    plus, where the pairs are made by class, the rank of a typical own partner. Made by class (labelled
    groups only): the median own partner (on a seeded `sample` of the pairs; the larger of the two ways)
    trails at least CLASS_PAIRED of the median class's values. Paired by sample, the own partner is among the
    first few; paired by class (an image of a 3 with any recording of "three"), it ranks anywhere among its
    class's values, half of them on average, and a pair is then wrong where it trails its class's typical
    value by the margin, not its class's best."""
    if labels is None or len(ea) < 2:
        return beaten_by
    rows = np.random.default_rng(seed).choice(len(ea), min(sample, len(ea)), replace=False)
    shares = np.maximum(partner_ranks(ea, eb, rows=rows), partner_ranks(eb, ea, rows=rows))
    typical = int(np.median(shares) * (len(ea) - 1))
    class_size = float(np.median(np.unique(labels, return_counts=True)[1]))
    return min(beaten_by + typical, len(ea)) if typical >= CLASS_PAIRED * class_size else beaten_by


def group_margins(ea: np.ndarray, eb: np.ndarray, scale: float, make: Callable = make_index,
                  beaten_by: int = BEATEN_BY, ranked_from: float | np.ndarray = -np.inf
                  ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """`mismatch_scores` within one group of candidates: the pairs (ea[i], eb[i]), logit scale `scale`;
    (margins, the row whose `b` each `a` matches best, rank shares)."""
    own = np.einsum("nd,nd->n", ea, eb)
    k = min(beaten_by, len(ea))
    ab, best_b = knn(eb, k, make(eb, 0), queries=ea)
    ba, _ = knn(ea, k, make(ea, 0), queries=eb)
    margin = scale * (np.minimum(ab[:, k - 1], ba[:, k - 1]) - own)
    return margin, best_b[:, 0], rank_shares(ea, eb, margin >= ranked_from)


def rank_shares(ea: np.ndarray, eb: np.ndarray, where: np.ndarray) -> np.ndarray:
    """The rank share of each pair (ea[i], eb[i]) among the group's candidates, the larger of the two ways,
    where `where` holds (0 elsewhere)."""
    share = np.zeros(len(ea))
    ranked = np.flatnonzero(where)
    if len(ranked):
        share[ranked] = np.maximum(partner_ranks(ea, eb, rows=ranked), partner_ranks(eb, ea, rows=ranked))
    return share


def judged_pairs(space: Space) -> list[tuple[str, str]]:
    """The modality pairs the mismatch finder judges: those the run trained against each other (an anchor's
    pairs, or the loss's explicit pairs: a pair never trained is aligned only through a third modality),
    every pair where the space does not say."""
    if space.pairs:
        return [(a, b) for a, b in space.pairs if a in space.emb and b in space.emb]
    return list(combinations(space.modalities, 2))


def class_margins(pa: np.ndarray, pb: np.ndarray) -> np.ndarray:
    """Per sample, from two modalities' class probabilities [N, C] (each never saw the sample's label): how
    many nats `pa` prefers its likeliest class to the class `pb` finds likeliest, and the same from `pb`'s
    side, the smaller of the two (0 where both name the same class; both ways must disagree)."""
    rows = np.arange(len(pa))
    ca, cb = pa.argmax(axis=1), pb.argmax(axis=1)
    la, lb = np.log(np.maximum(pa, 1e-12)), np.log(np.maximum(pb, 1e-12))
    return np.minimum(la[rows, ca] - la[rows, cb], lb[rows, cb] - lb[rows, ca])


def mismatched_pairs(space: Space, margin: float = MISMATCH_MARGIN, make: Callable = make_index,
                     scores: Callable = mismatch_scores, classes: dict[str, np.ndarray] | None = None,
                     evidence: float = CLASS_EVIDENCE) -> list[Finding]:
    """Samples whose partner in another modality is beaten by at least BEATEN_BY candidates by at least
    `margin` nats both ways (`scores`: `mismatch_scores`, or the refit runs' out-of-fold ones), for every
    judged pair of modalities. `classes`: per modality, class probabilities that never saw the sample's label
    (`labels.modality_probs`); where given, a pair whose margin plus its class margin (`class_margins`)
    reaches `evidence` nats is flagged too, where the margin is above 0 (the own partner is beaten: a pair
    whose own partner is among its best matches is not flagged on its classes alone): a run that trained on
    a swapped pair pulled its two values together, but each still looks like its own class. Score: the margin."""
    found = []
    for a, b in judged_pairs(space):
        lift = class_margins(classes[a], classes[b]) if classes else np.zeros(len(space))
        bar = np.maximum(np.minimum(margin, evidence - lift), 0.0)
        score, best, share = scores(space, a, b, make, ranked_from=bar)
        for row in np.flatnonzero((score >= bar) & (score > 0)).tolist():
            p = int(best[row])
            detail = {"rank_share": round(float(share[row]), 6)}
            if classes:
                detail["class_margin"] = round(float(lift[row]), 6)
            found.append(Finding(space.keys[row], MISMATCH, float(score[row]), str(space.splits[row]),
                                 space.keys[p] if p != row else "", str(space.splits[p]) if p != row else "",
                                 f"{a}-{b}", space.class_name(int(space.labels[row])), detail=detail))
    return found


UNIQUENESS_WEIGHTS = (0.6, 0.3, 0.1)  # FiftyOne Brain's weights of the 3 nearest neighbours' distances


def neighbour_scores(space: Space, k: int = 10, neighbours: tuple[np.ndarray, np.ndarray] | None = None
                     ) -> dict[str, np.ndarray]:
    """Per sample, in the joint space: `outlier` (mean cosine distance to its k nearest neighbours),
    `uniqueness` (weighted distance to its 3 nearest, scaled to [0, 1] by the largest) and
    `representativeness` (cosine to its class's mean point)."""
    joint = space.joint()
    sims, _ = neighbours or joint_neighbours(space, max(k, len(UNIQUENESS_WEIGHTS)))
    dist = 1.0 - np.where(np.isfinite(sims), sims, 0.0)
    outlier = dist[:, :k].mean(axis=1)
    unique = dist[:, :len(UNIQUENESS_WEIGHTS)] @ np.array(UNIQUENESS_WEIGHTS)
    unique = unique / unique.max() if len(unique) and unique.max() > 0 else unique
    rep = np.zeros(len(space))
    for label in np.unique(space.labels):
        rows = np.flatnonzero(space.labels == label)
        centre = joint[rows].mean(axis=0)
        rep[rows] = joint[rows] @ (centre / max(np.linalg.norm(centre), 1e-12))
    return {"outlier": outlier, "uniqueness": unique, "representativeness": rep}


def outlier_fence(scores: np.ndarray, far: float = 3.0) -> float:
    """Tukey's far-out fence: Q3 + far x IQR."""
    q1, q3 = np.percentile(scores, [25, 75]) if len(scores) else (0.0, 0.0)
    return float(q3 + far * (q3 - q1))


def outliers(space: Space, scores: dict[str, np.ndarray], far: float = 3.0) -> tuple[list[Finding], float]:
    """Samples whose k-NN distance is beyond the far-out fence, and the fence."""
    fence = outlier_fence(scores["outlier"], far)
    rows = np.flatnonzero(scores["outlier"] > fence)
    return [Finding(space.keys[r], OUTLIER, float(scores["outlier"][r]), str(space.splits[r]),
                    label=space.class_name(int(space.labels[r]))) for r in rows.tolist()], fence


def representative(space: Space, scores: dict[str, np.ndarray], n: int = 5) -> dict[str, dict[str, list[str]]]:
    """Per class, the keys of its `n` most and `n` least representative samples."""
    out = {}
    for label in np.unique(space.labels):
        rows = np.flatnonzero(space.labels == label)
        order = rows[np.argsort(-scores["representativeness"][rows], kind="stable")]
        out[space.class_name(int(label))] = {"most": [space.keys[r] for r in order[:n]],
                                             "least": [space.keys[r] for r in order[::-1][:n]]}
    return out
