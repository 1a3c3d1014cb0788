"""Modalities paired by class (an image of a 3 with any recording of "three"): a sample's own partner is one of its
class's values, so the mismatch margin is to the candidate a typical own partner ranks with, not to the
class's best (`mismatch.beaten_by_in`)."""

from __future__ import annotations

import numpy as np
import pytest

from jointspace.audit.labels import mislabelled, modality_probs
from jointspace.audit.mismatch import (
    BEATEN_BY,
    CLASS_EVIDENCE,
    MISMATCH_MARGIN,
    beaten_by_in,
    class_margins,
    mismatch_scores,
    mismatched_pairs,
)
from jointspace.audit.neighbours import kth_best
from jointspace.audit.refit import Refit
from jointspace.audit.space import Space

from .test_finders import _margins, _space

N_CLASS = 40


def _paired(by_class: bool) -> Space:
    """3 classes of 40; each image's recording is any of its class's (by_class) or a noisy copy of the image;
    the recordings of s005 (class a) and s090 (class c) swapped."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), N_CLASS)
    centres = rng.normal(size=(3, 16)) * 3
    image = centres[labels] + rng.normal(size=(3 * N_CLASS, 16))
    audio = centres[labels] + rng.normal(size=(3 * N_CLASS, 16)) if by_class else image + 0.3 * rng.normal(size=image.shape)
    audio[[5, 90]] = audio[[90, 5]]
    space = _space({"image": image, "audio": audio}, labels=labels)
    space.logit_scale = 20.0
    return space


def test_pairs_made_by_class_are_judged_against_a_typical_partner():
    space = _paired(by_class=True)
    ea, eb = space.emb["image"], space.emb["audio"]
    k = beaten_by_in(ea, eb, space.labels)
    assert BEATEN_BY + N_CLASS // 4 <= k <= BEATEN_BY + 3 * N_CLASS // 4  # about half its class beats it
    assert beaten_by_in(ea, eb, None) == BEATEN_BY  # no labels: no classes to tell by
    clean = np.setdiff1d(np.arange(len(space)), [5, 90])
    assert (_margins(space, "image", "audio", BEATEN_BY)[clean] >= MISMATCH_MARGIN).sum() >= 5  # to the class's best
    margin, _, _ = mismatch_scores(space, "image", "audio")
    assert margin == pytest.approx(_margins(space, "image", "audio", k), abs=1e-4)
    assert {f.key for f in mismatched_pairs(space)} == {"s005", "s090"}


def test_pairs_made_by_sample_keep_the_third_best_candidate():
    space = _paired(by_class=False)
    assert beaten_by_in(space.emb["image"], space.emb["audio"], space.labels) == BEATEN_BY
    assert {f.key for f in mismatched_pairs(space)} == {"s005", "s090"}


def test_the_audit_says_how_many_candidates_must_beat_a_partner_per_pair_and_split():
    pytest.importorskip("cleanlab")
    from jointspace.audit.run import Settings, audit_space

    space = _paired(by_class=True)
    found, summary, _ = audit_space(space, Settings(finders=("mismatch",)))
    k = beaten_by_in(space.emb["image"], space.emb["audio"], space.labels)
    assert summary["mismatch_beaten_by"] == {"image-audio": {"train": k}} and k > BEATEN_BY
    assert {f.key for f in found} == {"s005", "s090"}  # with the class margins too


def test_the_kth_best_candidate_by_hand_and_at_the_same_share_of_a_sample():
    rng = np.random.default_rng(0)
    queries, cands = rng.normal(size=(50, 8)), rng.normal(size=(300, 8))
    exact = -np.sort(-(queries @ cands.T), axis=1)[:, 39]
    assert kth_best(queries, cands, 40, block=7) == pytest.approx(exact)
    sampled = kth_best(queries, cands, 40, sample=150)  # the 20th of 150 sampled candidates
    above = ((queries @ cands.T) > sampled[:, None]).sum(axis=1)  # its place among every candidate
    assert not np.allclose(sampled, exact) and 30 <= np.median(above) <= 48


def test_each_refit_run_judges_its_fold_against_its_own_typical_partner():
    space = _paired(by_class=True)
    fold = np.arange(len(space)) % 2
    refit = Refit(fold, [space, space])  # each fold's run: the audited run's embeddings, in its train order
    _, mine = refit.rows(space, 0)
    k = beaten_by_in(space.emb["image"][mine], space.emb["audio"][mine], space.labels[mine])
    assert BEATEN_BY < k < beaten_by_in(space.emb["image"], space.emb["audio"], space.labels)  # half the candidates
    assert {f.key for f in mismatched_pairs(space, scores=refit.scores)} == {"s005", "s090"}


def test_paired_by_class_only_values_whose_classes_disagree_make_a_wrong_pair():
    pytest.importorskip("cleanlab")
    space = _paired(by_class=True)
    space.logit_scale = 30.0  # hotter: a few clean pairs trail even their class's typical value by ln 10
    margin_only = {f.key for f in mismatched_pairs(space)}
    assert {"s005", "s090"} < margin_only  # the swap, and clean pairs of one class
    probes = modality_probs(space, ["image", "audio"])
    found = mismatched_pairs(space, classes=probes)
    assert {f.key for f in found} == {"s005", "s090"} and all(f.detail["class_margin"] > 0 for f in found)


def test_paired_by_class_a_value_its_probe_names_less_surely_than_that_class_names_its_own_is_not_wrong():
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), N_CLASS)
    centres = rng.normal(size=(3, 16)) * 3
    image = centres[labels] + rng.normal(size=(3 * N_CLASS, 16))
    audio = centres[labels] + rng.normal(size=(3 * N_CLASS, 16))
    audio[[5, 90]] = audio[[90, 5]]  # a swap across classes a and c
    audio[10] = 0.4 * centres[0] + 0.6 * centres[1] + rng.normal(size=16)  # a recording of a, between a and b
    space = _space({"image": image, "audio": audio}, labels=labels)
    space.logit_scale = 20.0
    probes = modality_probs(space, ["image", "audio"])
    lift = class_margins(probes["image"], probes["audio"])
    margin, _, _ = mismatch_scores(space, "image", "audio")
    assert 0 < margin[10] and margin[10] + lift[10] >= CLASS_EVIDENCE  # the margin and class routes would flag it
    assert probes["audio"][10].argmax() == 1 and probes["audio"][10, 1] < probes["audio"][labels == 1, 1].mean()
    assert set(np.flatnonzero(mislabelled(probes["audio"], labels, space.splits))) >= {5, 90}
    assert not mislabelled(probes["audio"], labels, space.splits)[10]  # cleanlab: not as sure as b's own
    assert {f.key for f in mismatched_pairs(space, classes=probes)} == {"s005", "s090"}


def test_label_issues_within_each_split_and_none_in_a_split_of_one_class():
    pytest.importorskip("cleanlab")
    labels = np.array([0] * 10 + [1] * 10 + [0] * 6)
    probs = np.tile([[0.9, 0.1]], (26, 1))
    probs[10:20] = [0.1, 0.9]
    probs[3] = [0.02, 0.98]  # a 0 its probe calls a 1, more surely than the 1s
    probs[22] = [0.02, 0.98]  # the same in a split of 0s alone
    splits = np.array(["train"] * 20 + ["test"] * 6, dtype=object)
    assert np.flatnonzero(mislabelled(probs, labels, splits)).tolist() == [3]


def test_with_refit_the_class_margins_of_a_recording_the_run_fitted_come_from_the_run_that_did_not_see_it():
    """The audited run memorised the swapped recordings as their partners' class (a unique value is easily
    fitted; `loss.positives: label` trains it to): its own probes see no class disagreement. Each fold's run
    never trained on them: its probe (fitted on the other fold) places them in the class they were spoken in.
    Val samples sit among the train ones (a train sample's row differs from its row in a fold's space) and
    keep the audited run's probes."""
    pytest.importorskip("cleanlab")
    from jointspace.audit.run import Settings, audit_space

    unseen = _paired(by_class=True)
    splits = ["val" if i % 10 == 3 else "train" for i in range(len(unseen))]
    train = np.flatnonzero(np.array(splits) == "train")
    rng = np.random.default_rng(1)
    fitted = _space(unseen.emb, splits=splits, labels=unseen.labels)
    fitted.logit_scale = 20.0
    centres = np.stack([fitted.emb["image"][fitted.labels == c].mean(axis=0) for c in range(3)])
    for row in (5, 90):  # pulled among the recordings of its image's class
        value = centres[fitted.labels[row]] + 0.05 * rng.normal(size=16)
        fitted.emb["audio"][row] = value / np.linalg.norm(value)
    fold = np.full(len(fitted), -1)
    fold[train] = np.arange(len(train)) % 2
    runs = []
    for seed in (2, 3):  # two fold runs, each its own embedding of the train split (in the audited train order)
        noise = np.random.default_rng(seed)
        runs.append(_space({m: e[train] + 0.05 * noise.normal(size=e[train].shape) for m, e in unseen.emb.items()},
                           labels=unseen.labels[train]))
        runs[-1].logit_scale = 20.0
    refit = Refit(fold, runs)
    audited = modality_probs(fitted, ["image", "audio"])
    assert class_margins(audited["image"], audited["audio"])[[5, 90]].max() == 0.0  # fitted: the classes agree
    assert mismatched_pairs(fitted, scores=refit.scores, classes=audited) == []
    held = refit.modality_probs(fitted, ["image", "audio"])
    assert held["audio"][5].argmax() == 2 and held["audio"][90].argmax() == 0  # spoken in the other's class
    val = np.flatnonzero(np.array(splits) == "val")
    assert np.array_equal(held["audio"][val], audited["audio"][val]) and not np.allclose(held["audio"][train],
                                                                                         audited["audio"][train])
    assert {f.key for f in mismatched_pairs(fitted, scores=refit.scores, classes=held)} == {"s005", "s090"}
    found, summary, _ = audit_space(fitted, Settings(finders=("mismatch",), refit=2), refit=refit)
    assert {f.key for f in found} == {"s005", "s090"} and "refit run" in summary["mismatch_classes"]
