"""The label finder's two judges, worked by hand: the neighbour vote, its agreement with the probe, and a
flipped label that a linear probe cannot see but the sample's neighbours can."""

from __future__ import annotations

import numpy as np
import pytest

from jointspace.audit.labels import VOTE_FLOOR, agreement, label_issues, vote
from jointspace.audit.neighbours import knn
from jointspace.audit.space import Space, content_hash


def test_the_vote_is_each_class_share_of_the_first_neighbours():
    labels = np.array([0, 1, 1, 2])
    rows = np.array([[1, 2, 3, 0, 0, 0],  # voters: rows 1, 2, 3, 0, 0 -> classes 1, 1, 2, 0, 0
                     [0, -1, -1, -1, -1, 3],  # one known voter in the first five
                     [-1, -1, -1, -1, -1, -1]])  # none: uniform
    assert vote(labels, rows, 3).tolist() == [[0.4, 0.4, 0.2], [1.0, 0.0, 0.0], [1 / 3, 1 / 3, 1 / 3]]


def test_agreement_is_the_normalised_geometric_mean_of_the_two_judges():
    probe, votes = np.array([[0.9, 0.1]]), np.array([[0.2, 0.8]])
    # sqrt(0.9 x 0.201) = 0.425323, sqrt(0.1 x 0.801) = 0.283019: normalised 0.600448 / 0.399552
    assert agreement(probe, votes, floor=1e-3)[0] == pytest.approx([0.600448, 0.399552], abs=1e-6)
    # a class every voter rules out keeps only the floor's say
    out = agreement(np.array([[0.5, 0.5]]), np.array([[1.0, 0.0]]))
    assert out[0, 1] == pytest.approx(np.sqrt(VOTE_FLOOR) / (np.sqrt(1 + VOTE_FLOOR) + np.sqrt(VOTE_FLOOR)))


def _xor_space(flip: int) -> Space:
    """Four tight clusters on the unit circle at 45, 135, 225 and 315 degrees; class a at 45 and 225, class b
    at 135 and 315 (no line parts them); sample `flip` (at 45 degrees) labelled b."""
    rng = np.random.default_rng(0)
    angles = np.repeat(np.radians([45, 135, 225, 315]), 20) + rng.normal(scale=0.05, size=80)
    image = np.stack([np.cos(angles), np.sin(angles)], axis=1).astype(np.float32)
    labels = np.repeat([0, 1, 0, 1], 20)
    labels[flip] = 1
    return Space(keys=[f"s{i:03d}" for i in range(80)], splits=np.array(["train"] * 80, dtype=object),
                 labels=labels, emb={"image": image}, kinds={"image": "image"}, class_names=["a", "b"],
                 hashes={"image": np.array([content_hash(str(i)) for i in range(80)], dtype=object)})


def test_a_flipped_label_no_line_can_see_is_found_by_the_vote_of_its_neighbours():
    pytest.importorskip("cleanlab")
    space = _xor_space(flip=7)
    probe_only, _ = label_issues(space)
    assert "s007" not in {f.key for f in probe_only}  # the probe guesses about 1/2 everywhere
    _, near = knn(space.joint(), 16)
    found, about = label_issues(space, neighbours=near)
    assert [(f.key, f.label, f.suggested) for f in found] == [("s007", "b", "a")]
    assert about["voters"] == 5 and about["folds"] == 5
