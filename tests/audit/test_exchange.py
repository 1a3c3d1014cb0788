"""A swap has two sides (`mismatch.exchanged`): a run that trained on it can fit one side, whose own margin then
shrinks below the bar, while that side's image still prefers the caption it was swapped out of."""

from __future__ import annotations

import numpy as np
import pytest

from jointspace.audit import mismatch
from jointspace.audit.mismatch import EXCHANGE_PREFERENCE, MISMATCH_MARGIN, exchanged, mismatched_pairs

from .test_class_paired import _paired
from .test_finders import _margins, _space, _unit


def _fitted_swap(pull: float):
    """60 images, each captioned by a noisy copy; the captions of s007 and s041 swapped, and s041's image pulled
    towards the caption it holds by `pull` (the run fitted that side of the swap); logit scale 20."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(60, 16))
    text = image + 0.3 * rng.normal(size=(60, 16))
    text[[7, 41]] = text[[41, 7]]
    image, text = _unit(image), _unit(text)
    image[41] = (1 - pull) * image[41] + pull * text[41]
    space = _space({"image": image, "text": text})
    space.logit_scale = 20.0
    logits = space.logit_scale * space.emb["image"] @ space.emb["text"].T
    return space, logits


def test_the_fitted_side_of_a_swap_is_found_through_the_other_side():
    space, logits = _fitted_swap(0.35)
    margins = _margins(space, "image", "text")
    assert margins[41] < 0 < MISMATCH_MARGIN <= margins[7]  # s041's own caption is among its best: no margin
    assert logits[7, 41] - logits[7, 7] >= MISMATCH_MARGIN  # s007's image wants s041's caption (its own)
    prefers = logits[41, 7] - logits[41, 41]  # s041's image prefers s007's caption (its own) to the one it holds
    assert prefers >= EXCHANGE_PREFERENCE
    findings = mismatched_pairs(space)
    found = {f.key: f for f in findings}
    assert len(findings) == 2 and set(found) == {"s007", "s041"}
    assert found["s041"].partner_key == "s007" and found["s041"].detail["margin"] == pytest.approx(margins[41], abs=1e-4)
    assert found["s041"].score == found["s007"].score == pytest.approx(margins[7], abs=1e-4)  # one swap, one score
    assert found["s041"].detail["exchange_preference"] == pytest.approx(prefers, abs=1e-4)
    assert "exchange_preference" not in found["s007"].detail


def test_without_the_other_side_only_the_unfitted_side_is_found(monkeypatch):
    space, _ = _fitted_swap(0.35)
    monkeypatch.setattr(mismatch, "EXCHANGE_PREFERENCE", np.inf)
    assert {f.key for f in mismatched_pairs(space)} == {"s007"}


def test_a_side_fitted_until_it_prefers_its_caption_by_less_than_the_exchange_preference_is_not_found():
    space, logits = _fitted_swap(0.5)
    assert 0 < logits[41, 7] - logits[41, 41] < EXCHANGE_PREFERENCE
    assert {f.key for f in mismatched_pairs(space)} == {"s007"}


def test_no_other_side_where_the_modalities_are_paired_by_class(monkeypatch):
    space = _paired(by_class=True)
    monkeypatch.setattr(mismatch, "EXCHANGE_PREFERENCE", -1e9)  # any value a flagged image wants would pass
    assert {f.key for f in mismatched_pairs(space)} == {"s005", "s090"}


def test_the_other_side_is_a_value_the_flagged_image_wants_by_the_margin(monkeypatch):
    space, logits = _fitted_swap(0.5)
    monkeypatch.setattr(mismatch, "EXCHANGE_PREFERENCE", -1e9)  # whatever the other side's image prefers
    wanted = np.flatnonzero(logits[7] - logits[7, 7] >= MISMATCH_MARGIN)  # s007 is the only one flagged
    assert 41 in wanted and 2 < len(wanted) < 50
    assert {f.key for f in mismatched_pairs(space)} == {"s007"} | {space.keys[j] for j in wanted}


def test_the_other_sides_by_hand_over_splits_and_blocks():
    rng = np.random.default_rng(3)
    image = rng.normal(size=(90, 16))
    text = image + 0.3 * rng.normal(size=(90, 16))
    swaps = {2: 11, 30: 40, 55: 70}  # two in train, one in val; the second of each partly fitted
    for i, j in swaps.items():
        text[[i, j]] = text[[j, i]]
    image[3], text[3] = image[2] + 0.1 * rng.normal(size=16), rng.normal(size=16)  # wants s011's caption too
    image, text = _unit(image), _unit(text)
    for j in swaps.values():
        image[j] = 0.65 * image[j] + 0.35 * text[j]
    space = _space({"image": image, "text": text}, splits=["train"] * 50 + ["val"] * 39 + ["test"])
    space.logit_scale = 20.0
    flagged = np.zeros(90, dtype=bool)
    flagged[[*swaps, 3, 89]] = True  # 89: alone in its split
    logits = space.logit_scale * space.emb["image"] @ space.emb["text"].T
    want = {}
    for j in range(90):  # the most-preferred flagged i of j's split whose image wants j's caption by the margin
        same = [i for i in np.flatnonzero(flagged) if space.splits[i] == space.splits[j] and
                logits[i, j] - logits[i, i] >= MISMATCH_MARGIN]
        prefers = {i: logits[j, i] - logits[j, j] for i in same}
        if not flagged[j] and prefers and max(prefers.values()) >= EXCHANGE_PREFERENCE:
            want[j] = max(prefers, key=prefers.get)
    assert {j: want.get(j) for j in swaps.values()} == {j: i for i, j in swaps.items()}
    assert logits[3, 11] - logits[3, 3] >= MISMATCH_MARGIN  # s011 is wanted by two, and prefers s002's caption
    counts = {"train": 3, "val": 3, "test": 3}
    for block in (1, 2, 256):
        got = exchanged(space, "image", "text", flagged, counts, block=block)
        assert {j: i for j, (i, _, _) in got.items()} == want
        assert [got[j][1] for j in want] == pytest.approx([logits[j, i] - logits[j, j] for j, i in want.items()],
                                                          abs=1e-4)
    assert set(exchanged(space, "image", "text", flagged, {**counts, "val": 40})) == set(want) - {70}
