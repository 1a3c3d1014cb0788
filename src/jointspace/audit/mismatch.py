"""The mismatch finder: for every pair of modalities the run trained, the samples whose own partner its
best candidates beat by a margin in the run's logits, both ways (or by less, where the two modalities' class
probabilities disagree too), judged within each split."""

from __future__ import annotations

import math
from collections.abc import Callable
from itertools import combinations

import numpy as np

from jointspace.audit.findings import MISMATCH, Finding
from jointspace.audit.labels import mislabelled
from jointspace.audit.neighbours import knn, kth_best, make_index, partner_ranks
from jointspace.audit.space import Space

MISMATCH_MARGIN = math.log(10)  # nats: the beating candidates are each at least 10 times likelier
CLASS_EVIDENCE = math.log(30)  # nats: the margin and the class margin together, where the space has labels
BEATEN_BY = 3  # candidates that must beat the own partner by the margin (one or two lookalikes do not count)
CLASS_PAIRED = 0.25  # a typical own partner trailing this share of its class's values or more: paired by class
EXCHANGE_PREFERENCE = math.log(3)  # nats: a swap's other side, its `a` preferring the flagged sample's value to its own


def mismatch_scores(space: Space, a: str, b: str, make: Callable = make_index, beaten_by: int = BEATEN_BY,
                    ranked_from: float | np.ndarray = -np.inf, counts: dict[str, int] | None = None
                    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """For every sample, within its split: the margin by which its `beaten_by`-th best candidate of `b` (more
    where the split's modalities are paired by class: `beaten_by_in`) beats its own `b` for its `a`, and the
    same from `b` to `a`, the smaller of the two (both ways must be wrong; 0 or below: the own partner is among
    the best); the row whose `b` its `a` matches best; and the rank share of its own `b` (the share of
    candidates that beat it, the larger of the two ways; estimated on a random 4096 in larger splits; only
    where the margin is at least `ranked_from`, one bar or a bar per sample, else 0). `counts`: the splits'
    `split_beaten_by` for `beaten_by`, where the caller has them.

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
    for split, k in (counts or split_beaten_by(space, a, b, beaten_by)).items():
        rows = np.flatnonzero(space.splits == split)
        margin[rows], best_b, share[rows] = group_margins(space.emb[a][rows], space.emb[b][rows], space.logit_scale,
                                                         make, k, bar[rows])
        best[rows] = rows[best_b]
    return margin, best, share


def split_beaten_by(space: Space, a: str, b: str, beaten_by: int = BEATEN_BY) -> dict[str, int]:
    """Per split: how many candidates must beat a sample's own partner (`beaten_by_in`; audit.json's
    `mismatch_beaten_by`)."""
    out = {}
    for split in dict.fromkeys(space.splits.tolist()):
        rows = np.flatnonzero(space.splits == split)
        out[split] = beaten_by_in(space.emb[a][rows], space.emb[b][rows],
                                  space.labels[rows] if space.classed else None, beaten_by)
    return out


def beaten_by_in(ea: np.ndarray, eb: np.ndarray, labels: np.ndarray | None = None, beaten_by: int = BEATEN_BY,
                 sample: int = 1024, seed: int = 0) -> int:
    """How many candidates must beat an own partner among the pairs (ea[i], eb[i]) of one group: `beaten_by`,
    plus, where the two are paired by class, the rank of a typical own partner. Paired by class (labelled
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
    (margins, the row whose `b` each `a` matches best, rank shares). The k-th best candidates come from the
    group's index (`make`) up to BEATEN_BY; beyond (paired by class: k in the hundreds or thousands), from
    `kth_best` (exact products over at most 4096 sampled candidates, at the same share)."""
    own = np.einsum("nd,nd->n", ea, eb)
    k = min(beaten_by, len(ea))
    near = min(k, BEATEN_BY)
    ab, best_b = knn(eb, near, make(eb, 0), queries=ea)
    if k > near:  # the index gives only each a's best match
        kth_ab, kth_ba = kth_best(ea, eb, k), kth_best(eb, ea, k)
    else:
        kth_ab, kth_ba = ab[:, k - 1], knn(ea, k, make(ea, 0), queries=eb)[0][:, k - 1]
    margin = scale * (np.minimum(kth_ab, kth_ba) - own)
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
                     evidence: float = CLASS_EVIDENCE, beaten_by: int = BEATEN_BY,
                     counts: dict[tuple[str, str], dict[str, int]] | None = None) -> list[Finding]:
    """Samples whose partner in another modality is beaten by at least `beaten_by` candidates (more where the two are
    paired by class: `split_beaten_by`, or `counts` per judged pair where the caller has them) by at least `margin`
    nats both ways (`scores`: `mismatch_scores`, or the refit runs' out-of-fold ones), for every judged pair of
    modalities. `classes`: per modality, class probabilities that never saw the sample's label
    (`labels.modality_probs`); where given, a pair whose margin plus its class margin (`class_margins`) reaches
    `evidence` nats is flagged too, where the margin is above 0 (the own partner is beaten: a pair whose own partner
    is among its best matches is not flagged on its classes alone): a run that trained on a swapped pair pulled its
    two values together, but each still looks like its own class. Where given and the two are paired by class, only a
    pair whose class margin is above 0 and one of whose values is a label issue of its own modality is flagged
    (`labels.mislabelled`: cleanlab on that modality's probabilities, within the split): any value of its class is a
    right partner, so a wrong pair is one whose values' classes disagree, with a value its own modality's probe places
    in another class as surely as that class's own values are placed on average. With `scores` from the refit runs,
    give `classes` from them too (`Refit.modality_probs`). `counts`, where given, must be `split_beaten_by` for this
    `beaten_by`; `scores` is called as (space, a, b, make, beaten_by, ranked_from=..., counts=...). And the other side
    of each swap found (`exchanged`, judged in `space`, the audited run's, also where `scores` are the refit runs'),
    which the run may have fitted. Score: the margin; on a swap's other side, its flagged partner's (one swap, one
    score; its own margin, which can be below the bar, in `detail.margin`)."""
    found, wrong = [], {}
    for a, b in judged_pairs(space):
        lift = class_margins(classes[a], classes[b]) if classes else np.zeros(len(space))
        bar = np.maximum(np.minimum(margin, evidence - lift), 0.0)
        ks = counts[(a, b)] if counts else split_beaten_by(space, a, b, beaten_by)
        score, best, share = scores(space, a, b, make, beaten_by, ranked_from=bar, counts=ks)
        flagged = (score >= bar) & (score > 0)
        if classes:
            by_class = np.array([ks[split] > beaten_by for split in space.splits.tolist()], dtype=bool)
            if by_class.any():
                for m in {a, b} - set(wrong):
                    wrong[m] = mislabelled(classes[m], space.labels, space.splits)
                flagged &= ~by_class | ((lift > 0) & (wrong[a] | wrong[b]))
        for row in np.flatnonzero(flagged).tolist():
            detail = {"rank_share": round(float(share[row]), 6)}
            found.append(_finding(space, a, b, row, float(score[row]), int(best[row]), detail,
                                  lift[row] if classes else None))
        for row, (partner, prefers, rank) in sorted(exchanged(space, a, b, flagged, ks, margin, beaten_by).items()):
            detail = {"rank_share": round(rank, 6), "margin": round(float(score[row]), 6),
                      "exchange_preference": round(prefers, 6)}
            found.append(_finding(space, a, b, row, float(score[partner]), partner, detail,
                                  lift[row] if classes else None))
    return found


def _finding(space: Space, a: str, b: str, row: int, score: float, partner: int, detail: dict,
             lift: float | None) -> Finding:
    if lift is not None:
        detail["class_margin"] = round(float(lift), 6)
    return Finding(space.keys[row], MISMATCH, score, str(space.splits[row]),
                   space.keys[partner] if partner != row else "", str(space.splits[partner]) if partner != row else "",
                   f"{a}-{b}", space.class_name(int(space.labels[row])), detail=detail)


def exchanged(space: Space, a: str, b: str, flagged: np.ndarray, counts: dict[str, int],
              margin: float = MISMATCH_MARGIN, beaten_by: int = BEATEN_BY, block: int = 256
              ) -> dict[int, tuple[int, float, float]]:
    """A swap has two sides: where a flagged sample i's `a` prefers sample j's `b` to its own by `margin` nats
    and j's `a` prefers i's `b` to its own by EXCHANGE_PREFERENCE, i holds j's value and j holds i's, and j is
    a mismatched pair too. A run that trained on a swap can fit one side of it: that side's own margin
    shrinks, yet its `a` still prefers the value it was swapped out of. From `a`'s side only (the first of the
    judged pair: the anchor, where the loss has one), in `space`'s embeddings; within each split paired by
    sample (`counts`, `split_beaten_by`: `beaten_by`; paired by class, any value of the class is a right
    partner); j not flagged. Returns {j: (i, how many nats j's `a` prefers i's `b` to its own, j's rank
    share)}, i the flagged sample whose value j's `a` prefers most."""
    out = {}
    for split, k in counts.items():
        rows = np.flatnonzero(space.splits == split)
        flagged_rows = np.flatnonzero(flagged[rows])
        if k > beaten_by or not len(flagged_rows):
            continue
        ea, eb, scale = space.emb[a][rows], space.emb[b][rows], float(space.logit_scale)
        own = scale * np.einsum("nd,nd->n", ea, eb)
        prefers, partner = np.full(len(rows), -np.inf), np.zeros(len(rows), dtype=np.int64)
        for start in range(0, len(flagged_rows), block):
            rows_i = flagged_rows[start:start + block]
            wants = scale * (ea[rows_i] @ eb.T) - own[rows_i, None] >= margin  # i's a prefers j's b
            pref = np.where(wants, scale * (eb[rows_i] @ ea.T) - own[None, :], -np.inf)  # j's a prefers i's b
            top = pref.argmax(axis=0)
            value = pref[top, np.arange(len(rows))]
            better = value > prefers
            prefers[better], partner[better] = value[better], rows_i[top[better]]
        hit = (prefers >= EXCHANGE_PREFERENCE) & ~flagged[rows]
        share = rank_shares(ea, eb, hit)
        out.update({int(rows[j]): (int(rows[partner[j]]), float(prefers[j]), float(share[j]))
                    for j in np.flatnonzero(hit)})
    return out
