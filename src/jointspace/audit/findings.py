"""The audit's findings: one row per suspect sample, and the finders that only need the joint space
(exact and near duplicates, leaks, mismatched pairs, outliers). Label issues: `labels.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from itertools import combinations

import numpy as np

from jointspace.audit.neighbours import class_partner_ranks, knn, make_index, pairs_above
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


def joint_neighbours(space: Space, k: int = NEAR_K, make: Callable = make_index) -> tuple[np.ndarray, np.ndarray]:
    """Every sample's k nearest others in the joint space (one search shared by the finders, in the index
    `make(vectors, seed)` makes: FAISS by default, or `audit.search.NeighbourSearch.index`)."""
    joint = space.joint()
    return knn(joint, k, make(joint, 0))


def near_duplicates(space: Space, threshold: float, neighbours: tuple[np.ndarray, np.ndarray] | None = None,
                    ratio: float = 0.1, k: int = 10, not_same: np.ndarray | None = None) -> list[Finding]:
    """Pairs (not identical in every modality) whose cosine is at least `threshold` in every modality and
    whose joint-space distance is at most `ratio` times the smaller of the two samples' distances to their
    k-th nearest neighbour: a copy stands out from its neighbourhood even where a class is packed tight.
    Found among the nearest neighbours in the joint space (a FAISS index); score: the lowest cosine.
    `not_same`: per-sample keys; pairs with the same key are not judged (the run's loss pulled them together)."""
    sims, rows = neighbours or joint_neighbours(space)
    i, j, cos = pairs_above(space.joint(), threshold, (sims, rows))
    if not_same is not None:
        differ = not_same[i] != not_same[j]
        i, j, cos = i[differ], j[differ], cos[differ]
    kth = 1.0 - sims[:, min(k, sims.shape[1]) - 1]
    lowest = np.min([np.einsum("nd,nd->n", space.emb[m][i], space.emb[m][j]) for m in space.modalities], axis=0)
    same = sample_hashes(space)
    keep = (lowest >= threshold) & (1.0 - cos <= ratio * np.minimum(kth[i], kth[j]))
    return [_pair_finding(space, a, b, NEAR, low, exact=False, by="joint space")
            for a, b, low in zip(i[keep].tolist(), j[keep].tolist(), lowest[keep].tolist()) if same[a] != same[b]]


INSTANCE, CLASS = "instance", "class"  # how a modality pair is paired in the run's space
CLASS_PAIRED = 0.25  # median share of same-class candidates beating the own partner (chance: 0.5)


def mismatch_scores(space: Space, a: str, b: str, make: Callable = make_index) -> tuple[np.ndarray, np.ndarray, str]:
    """For every sample, within its split: the rank share of its own `b` among the `b` values for its `a`
    (0: first; 1: last; estimated on a random 4096 candidates in larger splits) and the same from `b` to
    `a`; the row whose `b` its `a` matches best; and how the pair is paired in this space.

    Instance-paired (the default): the share of all candidates, combined as the smaller of the two ways
    (both must rank badly). Class-paired, where the samples have labels and, on this data, a sample's own
    partner does not outrank the other candidates of its class (the median share of them beating it, both
    ways, is at least CLASS_PAIRED; chance is 0.5, instance pairing gives about 0): the candidates of the
    sample's own class are as right as its partner and do not count; the share of the other classes'
    candidates that beat the partner, the larger of the two ways (free of the within-class noise, either
    way is evidence)."""
    n = len(space)
    ranks = {k: np.zeros(n) for k in ("ab", "ba", "same", "other_ab", "other_ba")}
    best = np.zeros(n, dtype=np.int64)
    labelled = space.labelled and len(np.unique(space.labels)) > 1
    for split in dict.fromkeys(space.splits.tolist()):
        rows = np.flatnonzero(space.splits == split)
        ea, eb = space.emb[a][rows], space.emb[b][rows]
        labels = space.labels[rows] if labelled else None
        ranks["ab"][rows], same_ab, other_ab, best_b = class_partner_ranks(ea, eb, labels, make=make)
        ranks["ba"][rows], same_ba, other_ba, _ = class_partner_ranks(eb, ea, labels, make=make)
        if labelled:
            ranks["same"][rows] = (same_ab + same_ba) / 2
            ranks["other_ab"][rows], ranks["other_ba"][rows] = other_ab, other_ba
        best[rows] = rows[best_b]
    if labelled and n and float(np.median(ranks["same"])) >= CLASS_PAIRED:
        return np.maximum(ranks["other_ab"], ranks["other_ba"]), best, CLASS
    return np.minimum(ranks["ab"], ranks["ba"]), best, INSTANCE


def judged_pairs(space: Space) -> list[tuple[str, str]]:
    """The modality pairs the mismatch finder judges: those the run trained against each other (an anchor's
    pairs, or the loss's explicit pairs: a pair never trained is aligned only through a third modality),
    every pair where the space does not say."""
    if space.pairs:
        return [(a, b) for a, b in space.pairs if a in space.emb and b in space.emb]
    return list(combinations(space.modalities, 2))


def mismatched_pairs(space: Space, max_share: float, paired: dict[str, str] | None = None,
                     make: Callable = make_index) -> list[Finding]:
    """Samples whose partner in another modality ranks outside the best `max_share` of the candidates
    `mismatch_scores` counts, for every judged pair of modalities; `paired` (if given) receives each pair's
    pairing ("instance" or "class")."""
    found = []
    for a, b in judged_pairs(space):
        score, best, how = mismatch_scores(space, a, b, make)
        if paired is not None:
            paired[f"{a}-{b}"] = how
        for row in np.flatnonzero(score > max_share).tolist():
            p = int(best[row])
            found.append(Finding(space.keys[row], MISMATCH, float(score[row]), str(space.splits[row]),
                                 space.keys[p] if p != row else "", str(space.splits[p]) if p != row else "",
                                 f"{a}-{b}", space.class_name(int(space.labels[row])), detail={"paired": how}))
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
