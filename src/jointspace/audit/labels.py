"""Label issues: class probabilities that never saw the sample's own label, handed to cleanlab
(`filter.find_label_issues`, `rank.get_label_quality_scores`). Two judges on the run's embeddings (every
modality side by side) give them: a k-fold linear probe (softmax regression: out-of-fold) and the vote of
the sample's nearest others in the joint space (Datalab's k-NN route); `agreement` combines the two."""

from __future__ import annotations

import numpy as np

from jointspace.audit.findings import LABEL, Finding
from jointspace.audit.space import Space
from jointspace.errors import require

WHAT = "jointspace audit (label issues; mismatched pairs of modalities paired by class)"
VOTERS = 5  # the nearest others whose labels vote
VOTE_FLOOR = 1e-3  # added to each class's share of the vote: no class is ruled out by 5 neighbours alone


def require_cleanlab():
    """cleanlab's modules (the optional extra `audit`), or MissingExtra naming it."""
    require("audit", "cleanlab", WHAT)
    return require("audit", "cleanlab.filter", WHAT), require("audit", "cleanlab.rank", WHAT)


def fit_softmax(x, y, n_classes: int, weight_decay: float = 1e-4, steps: int = 100):
    """A multinomial logistic regression (full-batch L-BFGS, L2 penalty) on tensors x [N, D], y [N]."""
    import torch

    w = torch.zeros(x.shape[1] + 1, n_classes, dtype=torch.float64, requires_grad=True)
    xb = torch.cat([x, torch.ones(len(x), 1, dtype=x.dtype)], dim=1)
    opt = torch.optim.LBFGS([w], lr=1.0, max_iter=steps, history_size=20, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = torch.nn.functional.cross_entropy(xb @ w, y) + weight_decay * (w[:-1] ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    return lambda q: torch.softmax(torch.cat([q, torch.ones(len(q), 1, dtype=q.dtype)], dim=1) @ w, dim=1)


def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """[N, C] class probabilities, each row from a linear probe (softmax regression) that did not see that
    sample (stratified k-fold where every class has `folds` samples, else plain k-fold)."""
    from sklearn.model_selection import KFold, StratifiedKFold

    _, counts = np.unique(labels, return_counts=True)
    splitter = (StratifiedKFold if counts.min() >= folds else KFold)(n_splits=folds, shuffle=True, random_state=seed)
    return probe_probs(features, labels, int(labels.max()) + 1, splitter.split(features, labels), seed)


def modality_probs(space: Space, modalities: list[str], folds: int = 5,
                   seed: int = 0) -> dict[str, np.ndarray]:
    """Per modality, [N, C] class probabilities from a k-fold probe on that modality's embeddings alone (the
    mismatch finder's class margins: `mismatch.class_margins`)."""
    return {m: out_of_fold_probs(space.emb[m], space.labels, folds, seed) for m in modalities}


def probe_probs(features: np.ndarray, labels: np.ndarray, n_classes: int, folds, seed: int = 0) -> np.ndarray:
    """[N, C] class probabilities of the rows each (fit rows, held rows) pair of `folds` holds out, from a
    linear probe fitted on that pair's fit rows (rows no pair holds out: uniform), smoothed by 1e-6 and
    normalised."""
    import torch

    x = torch.from_numpy(np.asarray(features, dtype=np.float64))
    y = torch.from_numpy(np.asarray(labels, dtype=np.int64))
    probs = np.zeros((len(labels), n_classes))
    with torch.random.fork_rng():
        torch.manual_seed(seed)
        for fit_rows, held in folds:
            predict = fit_softmax(x[fit_rows], y[fit_rows], n_classes)
            with torch.no_grad():
                probs[held] = predict(x[held]).numpy()
    probs += 1e-6
    return probs / probs.sum(axis=1, keepdims=True)


def vote(labels: np.ndarray, rows: np.ndarray, n_classes: int, voters: int = VOTERS) -> np.ndarray:
    """[Q, C] each query's share of its first `voters` neighbours (`rows` [Q, >= voters], row numbers into
    `labels`, -1 for none) in each class; uniform where a query has none."""
    rows = np.asarray(rows)[:, :voters]
    counts = np.zeros((len(rows), n_classes))
    for column in rows.T:
        known = column >= 0
        np.add.at(counts, (np.flatnonzero(known), labels[column[known]]), 1.0)
    total = counts.sum(axis=1, keepdims=True)
    return np.where(total > 0, counts / np.maximum(total, 1.0), 1.0 / n_classes)


def agreement(probe: np.ndarray, votes: np.ndarray, floor: float = VOTE_FLOOR) -> np.ndarray:
    """[N, C] the normalised geometric mean of a probe's probabilities and a neighbour vote (each class's
    share plus `floor`): a class is likely only where both judges find it likely. The probe draws lines
    through the whole space; the vote reads the sample's own neighbourhood, which can hold the true class
    where no line parts it, or where a run that partly fitted a wrong label moved the sample only so far."""
    log = 0.5 * np.log(np.maximum(probe, 1e-12)) + 0.5 * np.log(votes + floor)
    combined = np.exp(log - log.max(axis=1, keepdims=True))
    return combined / combined.sum(axis=1, keepdims=True)


def judged_probs(space: Space, neighbours: np.ndarray | None, folds: int = 5, seed: int = 0) -> np.ndarray:
    """[N, C] the k-fold probe's probabilities on the space's joint embeddings, with the vote of each sample's
    nearest others (`neighbours` [N, >= VOTERS] row numbers, self left out: `findings.joint_neighbours`)
    where given."""
    probs = out_of_fold_probs(space.joint(), space.labels, folds, seed)
    if neighbours is None:
        return probs
    return agreement(probs, vote(space.labels, neighbours, probs.shape[1]))


def mislabelled(probs: np.ndarray, labels: np.ndarray, splits: np.ndarray) -> np.ndarray:
    """[N] bool: cleanlab's label issues (`filter.find_label_issues`, its defaults but one process) of class
    probabilities `probs` that never saw the sample's label, within each split. cleanlab's per-class
    thresholds: a sample is an issue where its probabilities name another class as surely as that class's
    own samples name it on average. Within a split, a class none of its samples has takes no issue, and the
    only sample of a class is kept; a split of one class has none."""
    cl_filter, _ = require_cleanlab()
    out = np.zeros(len(labels), dtype=bool)
    for split in dict.fromkeys(splits.tolist()):
        rows = np.flatnonzero(splits == split)
        if len(np.unique(labels[rows])) > 1:
            out[rows] = cl_filter.find_label_issues(labels[rows], probs[rows], n_jobs=1)
    return out


def label_issues(space: Space, folds: int = 5, seed: int = 0, probs: np.ndarray | None = None,
                 neighbours: np.ndarray | None = None) -> tuple[list[Finding], dict]:
    """cleanlab's label issues (ranked by self-confidence), with each one's label-quality score (reported
    as 1 - quality: higher is more suspect) and suggested class; and counts per class and per suggested class,
    and the accuracy of the probabilities' argmax (`judged_probs`', or the given `probs`')."""
    cl_filter, cl_rank = require_cleanlab()
    labels, probed = space.labels, probs is None
    if probs is None:
        probs = judged_probs(space, neighbours, folds, seed)
    issues = cl_filter.find_label_issues(labels, probs, return_indices_ranked_by="self_confidence")
    quality = cl_rank.get_label_quality_scores(labels, probs)
    suggested = probs.argmax(axis=1)
    found = [Finding(space.keys[r], LABEL, 1.0 - float(quality[r]), str(space.splits[r]),
                     label=space.class_name(int(labels[r])), suggested=space.class_name(int(suggested[r])),
                     detail={"label_quality": round(float(quality[r]), 6)}) for r in np.asarray(issues).tolist()]
    per_class, per_suggested = {}, {}
    for f in found:
        per_class[f.label] = per_class.get(f.label, 0) + 1
        per_suggested[f.suggested] = per_suggested.get(f.suggested, 0) + 1
    accuracy = float((suggested == labels).mean()) if len(labels) else 0.0
    about = {"folds": folds, "voters": VOTERS if neighbours is not None else 0} if probed else {}
    return found, {"per_class": per_class, "per_suggested_class": per_suggested, "accuracy": accuracy, **about}
