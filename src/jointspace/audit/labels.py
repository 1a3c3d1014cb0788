"""Label issues: out-of-fold class probabilities from a k-fold linear probe on the run's embeddings (every
modality side by side), handed to cleanlab (`filter.find_label_issues`, `rank.get_label_quality_scores`)."""

from __future__ import annotations

import numpy as np

from jointspace.audit.findings import LABEL, Finding
from jointspace.audit.space import Space
from jointspace.errors import require

WHAT = "jointspace audit (label issues)"


def require_cleanlab():
    """cleanlab's modules (the optional extra `audit`), or MissingExtra naming it."""
    require("audit", "cleanlab", WHAT)
    return require("audit", "cleanlab.filter", WHAT), require("audit", "cleanlab.rank", WHAT)


def out_of_fold_probs(features: np.ndarray, labels: np.ndarray, folds: int = 5, seed: int = 0) -> np.ndarray:
    """[N, C] class probabilities, each row from a logistic regression that did not see that sample
    (stratified k-fold; a class with fewer samples than folds is predicted by folds that miss it)."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.model_selection import StratifiedKFold

    n_classes = int(labels.max()) + 1
    probs = np.zeros((len(labels), n_classes))
    _, counts = np.unique(labels, return_counts=True)
    k = int(max(2, min(folds, counts.min()))) if counts.min() >= 2 else folds
    splitter = StratifiedKFold(n_splits=k, shuffle=True, random_state=seed)
    fold_labels = labels if counts.min() >= k else np.zeros_like(labels)  # stratify only where it can
    for fit_rows, held in splitter.split(features, fold_labels):
        clf = LogisticRegression(max_iter=300, C=1.0)
        clf.fit(features[fit_rows], labels[fit_rows])
        probs[np.ix_(held, clf.classes_)] = clf.predict_proba(features[held])
    probs += 1e-6
    return probs / probs.sum(axis=1, keepdims=True)


def label_issues(space: Space, folds: int = 5, seed: int = 0,
                 probs: np.ndarray | None = None) -> tuple[list[Finding], dict]:
    """cleanlab's label issues (ranked by self-confidence), with each one's label-quality score (reported
    as 1 - quality: higher is more suspect) and suggested class; and counts per class and per suggested class."""
    cl_filter, cl_rank = require_cleanlab()
    labels = space.labels
    if probs is None:
        probs = out_of_fold_probs(space.joint(), labels, folds, seed)
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
    return found, {"per_class": per_class, "per_suggested_class": per_suggested, "probe_accuracy": accuracy,
                   "folds": folds}
