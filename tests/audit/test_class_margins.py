"""The mismatch finder's class margins: each modality's class probabilities (a k-fold probe on its own
embeddings) against the other's, added to the margin of a pair the run partly fitted."""

from __future__ import annotations

import numpy as np
import pytest

from jointspace.audit.labels import modality_probs
from jointspace.audit.mismatch import CLASS_EVIDENCE, MISMATCH_MARGIN, class_margins, mismatched_pairs
from jointspace.audit.space import Space

from .test_finders import _margins, _space


def test_class_margins_by_hand():
    image = np.array([[0.9, 0.05, 0.05], [0.7, 0.2, 0.1]])
    text = np.array([[0.1, 0.8, 0.1], [0.6, 0.3, 0.1]])
    # sample 0: image names a (0.9 / 0.05 over b), text names b (0.8 / 0.1 over a): the smaller, ln 8;
    # sample 1: both name a
    assert class_margins(image, text) == pytest.approx([np.log(8.0), 0.0])
    assert class_margins(text, image) == pytest.approx([np.log(8.0), 0.0])


def _partly_fitted_swap() -> Space:
    """Captions of s007 (class a) and s071 (class c) swapped, in a run whose logit scale puts their margins at
    1.5 nats and more (below ln 10); s040 (class b) labelled a."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    centres = rng.normal(size=(3, 16)) * 3
    image = centres[labels] + rng.normal(size=(90, 16))
    text = image + 0.5 * rng.normal(size=(90, 16))
    text[[7, 71]] = text[[71, 7]]  # a class-a caption and a class-c caption swapped
    flipped = labels.copy()
    flipped[40] = 0  # a class-b sample labelled a
    space = _space({"image": image, "text": text}, labels=flipped)
    space.logit_scale *= 1.5 / _margins(space, "image", "text")[[7, 71]].min()
    return space


def test_a_swap_the_run_partly_fitted_is_found_through_the_class_margin_and_a_flipped_label_is_not():
    """A run that trained on a swapped pair pulled it together: its margin is below ln 10. Each modality's
    class probabilities still name the value's own class, and the margin plus that class margin reaches
    ln 30. A flipped label gives no class margin (both modalities name the true class); a clean pair none."""
    space = _partly_fitted_swap()
    labels = np.repeat(np.arange(3), 30)
    by_hand = _margins(space, "image", "text")
    assert by_hand[[7, 71]].min() == pytest.approx(1.5, abs=1e-3) and by_hand.max() < MISMATCH_MARGIN
    assert mismatched_pairs(space) == []
    sure = np.full((90, 3), 0.05)
    sure[np.arange(90), labels] = 0.9  # each modality names its value's true class, 18 times the others
    said = sure.copy()
    said[[7, 71]] = said[[71, 7]]  # the swapped captions name their own classes
    found = mismatched_pairs(space, classes={"image": sure, "text": said})
    assert {f.key for f in found} == {"s007", "s071"}
    assert [f.detail["class_margin"] for f in found] == pytest.approx([np.log(18.0)] * 2, abs=1e-6)
    assert 1.5 < MISMATCH_MARGIN < CLASS_EVIDENCE <= 1.5 + np.log(18.0)
    probes = modality_probs(space, ["image", "text"])  # the audit's own: a k-fold probe per modality
    assert {f.key for f in mismatched_pairs(space, classes=probes)} == {"s007", "s071"}
    assert class_margins(probes["image"], probes["text"])[40] == 0.0  # the flipped label: both name class b


def test_a_pair_whose_own_partner_is_among_its_best_is_not_flagged_on_its_classes_alone():
    space = _partly_fitted_swap()
    assert _margins(space, "image", "text")[10] < 0  # s010's own caption beats the 3rd best candidate
    sure = np.full((90, 3), 1e-6)
    sure[np.arange(90), np.repeat(np.arange(3), 30)] = 1.0
    said = sure.copy()
    said[10] = sure[50]  # its caption's probe names class b, a million times over class a
    said[[7, 71]] = sure[[71, 7]]
    assert class_margins(sure, said)[10] > CLASS_EVIDENCE
    assert {f.key for f in mismatched_pairs(space, classes={"image": sure, "text": said})} == {"s007", "s071"}


def test_the_audit_takes_its_class_margins_from_a_probe_per_modality_unless_turned_off():
    from jointspace.audit.run import Settings, audit_space

    space = _partly_fitted_swap()
    found, summary, _ = audit_space(space, Settings(finders=("mismatch",)))
    assert {f.key for f in found} == {"s007", "s071"} and summary["mismatch_classes"] == "5-fold linear probe per modality"
    found, summary, _ = audit_space(space, Settings(finders=("mismatch",), class_evidence=float("inf")))
    assert found == [] and summary["mismatch_classes"] == "none"
