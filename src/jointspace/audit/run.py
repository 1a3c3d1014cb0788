"""`jointspace audit RUN DATA`: every finder over a run's joint space of a dataset, into an audit folder."""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import numpy as np

from jointspace.audit.content import content_near_duplicates, content_vectors
from jointspace.audit.findings import (
    CONTENT_THRESHOLD,
    DUPLICATE,
    LEAK,
    NEAR,
    NEAR_K,
    Finding,
    exact_duplicates,
    joint_neighbours,
    near_duplicates,
    neighbour_scores,
    outliers,
    representative,
)
from jointspace.audit.folder import AUDIT_FOLDER, write_findings, write_samples
from jointspace.audit.labels import VOTERS, label_issues, modality_probs, require_cleanlab
from jointspace.audit.mismatch import (
    CLASS_EVIDENCE,
    MISMATCH_MARGIN,
    judged_pairs,
    mismatch_scores,
    mismatched_pairs,
    split_beaten_by,
)
from jointspace.audit.page import write_page
from jointspace.audit.refit import Refit, fold_of, held_keys, load_refit
from jointspace.audit.search import NeighbourSearch
from jointspace.audit.space import TRAIN, Space, classified_space, load_space
from jointspace.errors import UsageError
from jointspace.run_dir import RunDir

FINDERS = ("exact", "near", "mismatch", "label", "outlier")


@dataclass(frozen=True)
class Settings:
    """The finders to run and their thresholds (each finder's default rule is stated in docs/audit.md)."""

    finders: tuple[str, ...] = FINDERS
    near_threshold: float = 0.95  # cosine in every modality
    near_ratio: float = 0.1  # and a joint distance at most 0.1 x the pair's 10th-neighbour distance
    near_content: float = CONTENT_THRESHOLD  # content vectors' cosine in every modality that has them
    neighbours: int = 10  # k of the k-NN outlier score (near duplicates look at 16)
    mismatch_margin: float = MISMATCH_MARGIN  # nats (ln 10): 3 candidates 10 x likelier than the own partner, both ways
    class_evidence: float = CLASS_EVIDENCE  # nats (ln 30): or margin + class margin (labelled data; inf: off)
    outlier_far: float = 3.0  # Tukey's far-out fence: Q3 + 3 IQR
    folds: int = 5
    refit: int = 0  # K > 1: judge the train split's pairs and labels by K runs trained without each fold
    seed: int = 0

    def __post_init__(self) -> None:
        unknown = [f for f in self.finders if f not in FINDERS]
        if unknown or not self.finders:
            raise UsageError(f"--finders: unknown finder {', '.join(unknown) or '(none given)'}; "
                             f"choose from {', '.join(FINDERS)}")
        if not -1.0 <= self.near_threshold <= 1.0:
            raise UsageError(f"--near-threshold must be a cosine in [-1, 1], got {self.near_threshold}")
        if not -1.0 <= self.near_content <= 1.0:
            raise UsageError(f"--near-content must be a cosine in [-1, 1], got {self.near_content}")
        if not self.mismatch_margin > 0.0:
            raise UsageError(f"--mismatch-margin must be a positive number of nats, got {self.mismatch_margin}")
        if not self.class_evidence >= self.mismatch_margin:
            raise UsageError(f"--class-evidence must be at least --mismatch-margin ({self.mismatch_margin:.4g} "
                             f"nats; inf: off), got {self.class_evidence}")
        if self.refit == 1 or self.refit < 0:
            raise UsageError(f"--refit must be 0 (off) or at least 2 folds, got {self.refit}")


def audit_space(space: Space, settings: Settings = Settings(), search: NeighbourSearch | None = None,
                probs: np.ndarray | None = None, refit: Refit | None = None) -> tuple[list[Finding], dict, dict]:
    """Run the chosen finders: (findings, summaries for audit.json, per-sample scores); their neighbour
    searches in FAISS, or on `search`'s backend (inside its `with` block). `probs` [N, C]: class
    probabilities for cleanlab (a classifier run's own) instead of the probe's and the neighbour vote's.
    `refit`: the train split's mismatch margins and class margins and the label finder's class probabilities
    come from the runs that did not train on each sample.
    A space without embeddings (a classifier run's) gets the exact-duplicate, label and content near-copy
    finders."""
    found: list[Finding] = []
    summary: dict = {"seconds": {}, "finders_run": []}

    def timed(name: str, fn):
        t0 = time.perf_counter()
        value = fn()
        summary["seconds"][name] = round(time.perf_counter() - t0, 3)
        finder = name.split("_")[0]  # near_content: the near finder's second route
        if finder in FINDERS and finder not in summary["finders_run"]:
            summary["finders_run"].append(finder)
        return value

    on = set(settings.finders)
    if "exact" in on:
        exact, summary["exact_per_modality"] = timed("exact", lambda: exact_duplicates(space))
        found += exact
    make = (search or NeighbourSearch()).index
    near = timed("neighbours", lambda: joint_neighbours(space, max(NEAR_K, settings.neighbours, VOTERS), make)) \
        if space.emb else None
    if "label" in on and space.classed:
        found += _label_finder(space, settings, probs, refit, near, make, summary, timed)
    scores: dict = {}
    content = timed("content_vectors", lambda: content_vectors(space)) if "near" in on else {}
    if space.emb:
        scores = _joint_finders(space, settings, make, near, found, summary, timed, content, refit)
    if "near" in on:  # by content too; a pair the joint space (or the hashes) found already is not repeated
        pairs = {(f.key, f.partner_key) for f in found if f.issue in (DUPLICATE, NEAR, LEAK)}
        found += [f for f in timed("near_content", lambda: content_near_duplicates(
                      space, settings.near_content, make=make, vectors=content)) if (f.key, f.partner_key) not in pairs]
    summary["finders_run"] = [f for f in FINDERS if f in summary["finders_run"]]
    return found, summary, scores


def _label_finder(space: Space, settings: Settings, probs: np.ndarray | None, refit: Refit | None, near, make,
                  summary: dict, timed) -> list[Finding]:
    """cleanlab's label issues from `probs` (a classifier run's own) or else from the k-fold probe and the
    vote of the `near` neighbours (of the train split on the `refit` runs where given); fills summary."""
    voters = near[1] if near is not None else None
    source = "the run's classifier"
    if probs is None:
        source = "k-fold linear probe" + (f" and the vote of the {VOTERS} nearest others" if voters is not None else "")
    if refit is not None and probs is None:
        probs = timed("refit_probe", lambda: refit.probs(space, settings.folds, settings.seed, voters, make))
        source += "; each train sample's on the refit run that did not train on it"
    found, summary["labels"] = timed("label", lambda: label_issues(space, settings.folds, settings.seed, probs, voters))
    summary["labels"]["probabilities"] = source
    return found


def _joint_finders(space: Space, settings: Settings, make, near, found: list[Finding], summary: dict, timed,
                   content: dict[str, np.ndarray], refit: Refit | None = None) -> dict:
    """The finders that search the joint space (its `near` neighbours: near duplicates, confirmed by `content`
    vectors where the space has them; mismatches, of the train split on the `refit` runs where given;
    outliers) and the per-sample scores; appends to `found` and `summary`."""
    on = set(settings.finders)
    if "near" in on:
        found += timed("near", lambda: near_duplicates(space, settings.near_threshold, near, settings.near_ratio,
                                                         settings.neighbours, content, settings.near_content))
    if "mismatch" in on and len(space.modalities) > 1:
        summary["mismatch_pairs"] = ["-".join(p) for p in judged_pairs(space)]
        counts = {p: split_beaten_by(space, *p) for p in judged_pairs(space)}
        summary["mismatch_beaten_by"] = {"-".join(p): k for p, k in counts.items()}
        summary["logit_scale"] = round(float(space.logit_scale), 6)
        scorer = refit.scores if refit is not None else mismatch_scores
        classes = timed("mismatch_probes", lambda: _class_probs(space, settings, summary, refit))
        found += timed("mismatch", lambda: mismatched_pairs(space, settings.mismatch_margin, make, scorer, classes,
                                                             settings.class_evidence, counts=counts))
    scores = timed("scores", lambda: neighbour_scores(space, settings.neighbours, near))
    if "outlier" in on:
        flagged, summary["outlier_fence"] = timed("outlier", lambda: outliers(space, scores, settings.outlier_far))
        found += flagged
    if space.labelled:
        summary["representative"] = representative(space, scores)
    return scores


def _class_probs(space: Space, settings: Settings, summary: dict, refit: Refit | None = None
                 ) -> dict[str, np.ndarray] | None:
    """The class margins' probabilities: a k-fold probe per judged modality (a train sample's on the `refit`
    run that did not train on it, where given), where the space has two classes or more and the class
    evidence is on (audit.json says which)."""
    on = space.classed and np.isfinite(settings.class_evidence)
    summary["mismatch_classes"] = f"{settings.folds}-fold linear probe per modality" if on else "none"
    if not on:
        return None
    judged = sorted({m for pair in judged_pairs(space) for m in pair})
    if refit is None:
        return modality_probs(space, judged, settings.folds, settings.seed)
    summary["mismatch_classes"] += "; each train sample's on the refit run that did not train on it"
    return refit.modality_probs(space, judged, settings.folds, settings.seed)


def _refit_applies(settings: Settings, joint: bool, splits: list[str] | None) -> None:
    """--refit's K trainings, refused before any work where they would judge nothing."""
    if not joint:
        raise UsageError("--refit retrains a run with a joint space, not a classifier")
    if not {"mismatch", "label"} & set(settings.finders):
        raise UsageError("--refit changes only the mismatch and label finders: add one to --finders")
    if splits and TRAIN not in splits:
        raise UsageError("--refit judges the train split by runs trained without each fold of it: add --split train")


def _refitted(space: Space, settings: Settings, refit: Callable | None, data, device: str) -> tuple[Refit | None, float]:
    """The refit runs' spaces (`settings.refit` folds, trained by `refit`) and the seconds they took; (None, 0)
    when off."""
    if not settings.refit:
        return None, 0.0
    t0 = time.perf_counter()
    fold = fold_of(space, settings.refit, settings.seed)
    runs = refit(held_keys(space, fold))
    return load_refit(space, fold, runs, data, device), time.perf_counter() - t0


def run_audit(run_dir: str | Path, data: str | Path, out: str | Path, splits: list[str] | None = None,
              settings: Settings = Settings(), overwrite: bool = False, device: str = "auto",
              search: NeighbourSearch | None = None, classified: Callable | None = None,
              refit: Callable | None = None) -> dict:
    """Audit `data` (its `splits`, default all) through the run's joint space into the folder `out`, its
    neighbour searches on `search`'s backend (default FAISS); the run folder records where (report.html
    and the web service find it there). A run without a joint space gives `classified(splits)`, its task's
    `class_probabilities`: then its exact duplicates and, from its own probabilities, its label issues.
    With `settings.refit` = K, `refit(held)` trains a run without each fold's train keys and returns their
    folders (`tasks.refit.train_without`). Returns audit.json's content."""
    search = search or NeighbourSearch()
    if classified is not None and not {"exact", "label", "near"} & set(settings.finders):
        raise UsageError(f"{run_dir} has no joint space: its audit finds exact duplicates, near copies by content "
                         f"and label issues (--finders exact,near,label), not {', '.join(settings.finders)}")
    if settings.refit:
        _refit_applies(settings, refit is not None and classified is None, splits)
    if "label" in settings.finders or ("mismatch" in settings.finders and np.isfinite(settings.class_evidence)):
        require_cleanlab()  # before any work: a missing extra is one line (mismatch: where paired by class)
    out = Path(out)
    sources = [run_dir, *([data] if Path(str(data)).exists() else [])]
    AUDIT_FOLDER.check(out, overwrite, sources)
    t0 = time.perf_counter()
    probs = None
    if classified is None:
        space = load_space(run_dir, data, splits, device)
    else:
        space, probs = classified_space(classified(splits))
    embed_s = time.perf_counter() - t0
    refitted, refit_s = _refitted(space, settings, refit, data, device)
    with search:
        found, summary, scores = audit_space(space, settings, search, probs, refitted)
    summary["seconds"]["embed"] = round(embed_s, 3)
    if refitted is not None:
        summary["seconds"]["refit"] = round(refit_s, 3)
        per_fold = np.bincount(refitted.fold[refitted.fold >= 0]).tolist()
        summary["refit"] = {"folds": settings.refit, "train_per_fold": per_fold}
    about = {"run": str(Path(run_dir).resolve()), "data": str(data), "splits": sorted(set(space.splits.tolist())),
             "n_samples": len(space), "modalities": space.kinds, "settings": asdict(settings),
             "search_backend": search.backend, **summary}
    with AUDIT_FOLDER.staged(out, overwrite, sources) as stage:
        result = write_findings(stage, found, about)
        write_samples(stage, space.keys, space.splits, scores)
        write_page(stage, space, found, result)
    RunDir(run_dir).write_last_audit({"folder": str(out.resolve()), "data": str(data), "splits": about["splits"],
                                      "n_samples": len(space), "counts": result["counts"]})
    return result
