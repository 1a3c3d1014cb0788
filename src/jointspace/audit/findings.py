"""The audit's findings: one row per suspect sample, and the finders that only need the joint space
(exact and near duplicates, leaks, outliers). Mismatched pairs: `mismatch.py`; label issues: `labels.py`."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import asdict, dataclass, field

import numpy as np

from jointspace.audit.neighbours import knn, make_index, pairs_above
from jointspace.audit.space import TRAIN, Space

DUPLICATE, NEAR, LEAK, MISMATCH, LABEL, OUTLIER = "duplicate", "near_duplicate", "leak", "mismatch", "label", "outlier"
ISSUES = (DUPLICATE, NEAR, LEAK, MISMATCH, LABEL, OUTLIER)
ALL = "all"  # the modality of a finding about whole samples


@dataclass
class Finding:
    """One suspect sample: the issue, a score (higher: more suspect), the sample it pairs with (a duplicate's
    original, a leak's train sample, the sample whose value a mismatched one's first modality matches best,
    or on a swap's other side the flagged sample holding its value), and its split."""

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
