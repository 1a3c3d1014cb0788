"""Each finder of `jointspace audit` against hand-built cases: exact pairs, near copies across splits (leaks), a
known swap, a known flipped label, a far-off sample."""

from __future__ import annotations

import numpy as np
import pytest

from jointspace.audit.findings import (
    DUPLICATE,
    LEAK,
    NEAR,
    exact_duplicates,
    near_duplicates,
    neighbour_scores,
    outliers,
    representative,
)
from jointspace.audit.labels import label_issues
from jointspace.audit.mismatch import MISMATCH_MARGIN, mismatch_scores, mismatched_pairs
from jointspace.audit.neighbours import knn, partner_ranks
from jointspace.audit.space import Space, content_hash


def _unit(x: np.ndarray) -> np.ndarray:
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


def _space(emb: dict[str, np.ndarray], splits=None, labels=None, hashes=None) -> Space:
    n = len(next(iter(emb.values())))
    rng = np.random.default_rng(1)
    return Space(keys=[f"s{i:03d}" for i in range(n)],
                 splits=np.array(splits or ["train"] * n, dtype=object),
                 labels=np.asarray(labels if labels is not None else np.zeros(n), dtype=np.int64),
                 emb={m: _unit(e) for m, e in emb.items()}, kinds={m: "image" for m in emb},
                 class_names=["a", "b", "c"],
                 hashes=hashes or {m: np.array([content_hash(rng.random(4)) for _ in range(n)], dtype=object)
                                   for m in emb})


def test_content_hash_is_of_the_value():
    a = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert content_hash(a) == content_hash(a.copy()) != content_hash(a.reshape(3, 2))
    assert content_hash(a) != content_hash(a.astype(np.int16)) and content_hash("x") != content_hash("y")


def test_exact_duplicates_within_a_split_and_leaks_across():
    rng = np.random.default_rng(0)
    emb = {"image": rng.normal(size=(6, 8)), "text": rng.normal(size=(6, 8))}
    hashes = {m: np.array([f"{m}{i}" for i in range(6)], dtype=object) for m in emb}
    for m in emb:
        hashes[m][3] = hashes[m][0]  # sample 3 is sample 0 again (train, train)
        hashes[m][5] = hashes[m][1]  # sample 5 (test) is train sample 1
    hashes["image"][4] = hashes["image"][2]  # the same image only: not a duplicate sample
    space = _space(emb, ["train"] * 4 + ["test"] * 2, hashes=hashes)
    found, per_modality = exact_duplicates(space)
    got = {(f.key, f.issue, f.partner_key, f.split, f.partner_split) for f in found}
    assert got == {("s003", DUPLICATE, "s000", "train", "train"), ("s005", LEAK, "s001", "test", "train")}
    assert per_modality["image"] == {"repeated_values": 3, "samples_with_a_repeat": 6}
    assert per_modality["text"]["repeated_values"] == 2


def test_near_duplicates_need_every_modality_and_name_leaks():
    rng = np.random.default_rng(0)
    n = 40
    image, text = rng.normal(size=(n, 16)), rng.normal(size=(n, 16))
    image[30], text[30] = image[2] + 0.01 * rng.normal(size=16), text[2] + 0.01 * rng.normal(size=16)  # test copy
    image[10], text[10] = image[5] + 0.01 * rng.normal(size=16), text[5] + 0.01 * rng.normal(size=16)  # train copy
    image[20] = image[6] + 0.01 * rng.normal(size=16)  # near in image only: not a near duplicate
    space = _space({"image": image, "text": text}, ["train"] * 25 + ["test"] * 15)
    found = near_duplicates(space, threshold=0.95)
    got = {(f.key, f.issue, f.partner_key) for f in found}
    assert got == {("s030", LEAK, "s002"), ("s010", NEAR, "s005")}
    assert all(f.score >= 0.95 for f in found)
    content = {"image": _unit(rng.normal(size=(n, 8)))}  # content vectors where the space has them
    content["image"][30] = content["image"][2]  # 30 copies 2 in content too; 10 and 5 differ there
    assert {(f.key, f.partner_key) for f in near_duplicates(space, 0.95, content=content)} == {("s030", "s002")}
    content["image"][10] = _unit(content["image"][5:6] + 0.005 * rng.normal(size=(1, 8)))[0]  # cosine ~0.9998
    assert {(f.key, f.partner_key) for f in near_duplicates(space, 0.95, content=content)} == {("s030", "s002"),
                                                                                              ("s010", "s005")}
    strict = near_duplicates(space, 0.95, content=content, content_threshold=0.99999)
    assert {(f.key, f.partner_key) for f in strict} == {("s030", "s002")}


def test_knn_leaves_each_query_out_and_ranks_partners():
    x = _unit(np.array([[1, 0], [0.9, 0.1], [0, 1], [-1, 0]], dtype=np.float32))
    sims, rows = knn(x, 2)
    assert rows[0].tolist() == [1, 2] and rows[3, 0] != 3 and np.all(np.diff(sims, axis=1) <= 0)
    ranks = partner_ranks(x, x[[0, 2, 1, 3]])  # rows 1 and 2 swapped
    assert ranks[0] == 0 and ranks[1] == pytest.approx(2 / 3) and ranks[2] == pytest.approx(1 / 3)
    many = _unit(np.random.default_rng(0).normal(size=(3000, 8)))
    exact = partner_ranks(many, many[::-1])
    sampled = partner_ranks(many, many[::-1], sample=1000)  # estimated on a random third of the candidates
    assert np.abs(exact - sampled).max() < 0.07 and abs(exact.mean() - sampled.mean()) < 0.01


def _margins(space: Space, a: str, b: str, k: int = 3) -> np.ndarray:
    """The mismatch margin by hand: the logit scale x (k-th best candidate's cosine - own), both ways, the smaller."""
    sims = space.emb[a] @ space.emb[b].T
    own = np.diag(sims)
    kth_ab, kth_ba = -np.sort(-sims, axis=1)[:, k - 1], -np.sort(-sims, axis=0)[k - 1]
    return space.logit_scale * (np.minimum(kth_ab, kth_ba) - own)


def test_a_known_swap_is_a_mismatched_pair_naming_the_other_sample():
    rng = np.random.default_rng(0)
    n = 60
    image = rng.normal(size=(n, 16))
    text = image + 0.3 * rng.normal(size=(n, 16))
    text[[7, 41]] = text[[41, 7]]  # two captions swapped
    space = _space({"image": image, "text": text})
    found = mismatched_pairs(space)
    assert {(f.key, f.partner_key, f.modality) for f in found} == {("s007", "s041", "image-text"),
                                                                   ("s041", "s007", "image-text")}
    by_hand = _margins(space, "image", "text")
    assert [f.score for f in found] == pytest.approx(by_hand[[7, 41]].tolist(), abs=1e-4)
    assert np.sort(by_hand)[-3] < MISMATCH_MARGIN <= by_hand[[7, 41]].min()  # only the two pass the rule
    shares = np.maximum(partner_ranks(space.emb["image"], space.emb["text"]),
                        partner_ranks(space.emb["text"], space.emb["image"]))
    assert [f.detail["rank_share"] for f in found] == pytest.approx(shares[[7, 41]].tolist(), abs=1e-6)
    space.logit_scale *= 0.9 * MISMATCH_MARGIN / by_hand[[7, 41]].max()
    assert mismatched_pairs(space) == []  # the same cosines in a run with a colder logit scale: below the margin


def test_the_margin_is_to_the_third_best_candidate_both_ways():
    """mismatch_scores equals the margin worked by hand for every sample, to the best candidate (beaten_by=1)
    and to the third (the default): a partner beaten by one or two candidates scores lower, never higher."""
    rng = np.random.default_rng(0)
    image = rng.normal(size=(80, 16))
    space = _space({"image": image, "text": image + 0.9 * rng.normal(size=(80, 16))})  # loosely paired
    for k in (1, 3):
        margin, best, _ = mismatch_scores(space, "image", "text", beaten_by=k)
        assert margin == pytest.approx(_margins(space, "image", "text", k), abs=1e-4)
    assert best.tolist() == np.argmax(space.emb["image"] @ space.emb["text"].T, axis=1).tolist()
    first, third = _margins(space, "image", "text", 1), _margins(space, "image", "text", 3)
    assert np.all(third <= first + 1e-6) and ((first >= MISMATCH_MARGIN) & (third < MISMATCH_MARGIN)).any()


def test_a_known_flipped_label_is_a_label_issue_with_its_suggested_class():
    pytest.importorskip("cleanlab")
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 4
    labels = np.repeat(np.arange(3), 40)
    image = centres[labels] + rng.normal(size=(120, 16))
    text = centres[labels] + rng.normal(size=(120, 16))
    flipped = labels.copy()
    flipped[17] = 2  # a class-0 sample labelled c
    found, summary = label_issues(_space({"image": image, "text": text}, labels=flipped), folds=5)
    assert found and found[0].key == "s017" and found[0].label == "c" and found[0].suggested == "a"
    assert len(found) <= 3 and summary["per_class"]["c"] >= 1 and summary["per_suggested_class"]["a"] >= 1


def test_a_far_sample_is_an_outlier_and_the_least_representative():
    rng = np.random.default_rng(0)
    image = np.eye(16)[np.zeros(50, dtype=int)] * 3 + 0.3 * rng.normal(size=(50, 16))
    image[9] = np.eye(16)[5]
    space = _space({"image": image})
    scores = neighbour_scores(space, k=5)
    found, fence = outliers(space, scores)
    assert [f.key for f in found] == ["s009"] and scores["outlier"][9] > fence
    assert scores["uniqueness"].argmax() == 9 and scores["uniqueness"].max() == pytest.approx(1.0)
    assert representative(space, scores, n=1)["a"]["least"] == ["s009"]


def test_a_tight_class_is_not_a_heap_of_near_duplicates_but_a_copy_in_it_is():
    rng = np.random.default_rng(0)
    centre = rng.normal(size=16) * 10
    image, text = centre + rng.normal(size=(30, 16)), centre + rng.normal(size=(30, 16))  # every cosine > 0.95
    image[29], text[29] = image[4] + 1e-3 * rng.normal(size=16), text[4] + 1e-3 * rng.normal(size=16)
    space = _space({"image": image, "text": text})
    assert np.min(space.emb["image"] @ space.emb["image"].T) > 0.95
    assert [(f.key, f.partner_key) for f in near_duplicates(space, threshold=0.95)] == [("s029", "s004")]


def test_a_class_paired_swap_is_found_and_no_classmate_is_flagged():
    """Captions paired with their images by class only (digits): a sample's own caption is no better than
    its classmates', so its rank among every caption flags clean samples; the margin does not (classmates
    score about as high as the own caption), and the swap across classes is found."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    centres = rng.normal(size=(3, 16)) * 3
    image = centres[labels] + rng.normal(size=(90, 16))
    templates = rng.normal(size=(3, 6, 16))  # six wordings per class, as digits has
    text = centres[labels] + templates[labels, rng.integers(0, 6, 90)]  # the class's caption, not the instance's
    text[[7, 71]] = text[[71, 7]]  # a class-a caption and a class-c caption swapped
    space = _space({"image": image, "text": text}, labels=labels)
    every = partner_ranks(space.emb["image"], space.emb["text"])
    every_back = partner_ranks(space.emb["text"], space.emb["image"])
    clean = np.minimum(every, every_back)[np.setdiff1d(np.arange(90), [7, 71])]
    assert (clean > 0.2).sum() > 5  # ranked among all candidates, classmates push clean partners down
    found = mismatched_pairs(space)
    assert {(f.key, f.modality) for f in found} == {("s007", "image-text"), ("s071", "image-text")}


def test_instance_paired_data_finds_a_swap_within_a_class_and_untrained_pairs_are_not_judged():
    """A swap within a class is found; a pair the run never trained against each other (text-audio under an
    image anchor) is skipped."""
    rng = np.random.default_rng(0)
    labels = np.repeat(np.arange(3), 30)
    image = rng.normal(size=(90, 16)) + 0.2 * rng.normal(size=(3, 16))[labels]
    text = image + 0.3 * rng.normal(size=(90, 16))
    audio = rng.normal(size=(90, 16))  # aligned with nothing
    text[[3, 12]] = text[[12, 3]]  # a swap within class a
    space = _space({"image": image, "text": text, "audio": audio}, labels=labels)
    space.pairs = [("image", "text")]
    found = mismatched_pairs(space)
    assert {(f.key, f.partner_key, f.modality) for f in found} == {("s003", "s012", "image-text"),
                                                                   ("s012", "s003", "image-text")}


def test_near_copies_by_content_need_every_array_close_and_the_same_caption():
    """A noisy copy of a picture and its scan is a near duplicate by content whatever the embeddings say
    (random here); with another caption it is not; a point set (no content vector) does not count."""
    from jointspace.audit.content import content_near_duplicates
    from jointspace.kinds.content import block_means

    rng = np.random.default_rng(0)
    n = 40
    images = [rng.integers(0, 255, (24, 24, 3)).astype(np.uint8) for _ in range(n)]
    scans = [rng.random((8, 30)).astype(np.float32) for _ in range(n)]
    captions = [f"caption {i % 7}" for i in range(n)]
    for copy, original in ((30, 3), (31, 4)):
        images[copy] = np.clip(np.round(images[original] + rng.normal(0, 2, images[original].shape)), 0, 255).astype(np.uint8)
        scans[copy] = scans[original] + 0.01 * scans[original].std() * rng.normal(size=scans[original].shape).astype(np.float32)
    captions[30] = captions[3]  # 31 keeps another caption than 4's
    points = [rng.random((50, 3)) for _ in range(n)]
    values = {"image": images, "lidar": scans, "text": captions, "points": points}
    kinds = {"image": "image", "lidar": "range", "text": "text", "points": "points"}
    space = Space([f"s{i:03d}" for i in range(n)], np.array(["train"] * 30 + ["test"] * 10, dtype=object),
                  np.zeros(n, dtype=np.int64), {m: _unit(rng.normal(size=(n, 4))) for m in kinds}, kinds,
                  hashes={m: np.array([content_hash(v) for v in vals], dtype=object) for m, vals in values.items()},
                  values=values)
    found = content_near_duplicates(space)
    assert [(f.key, f.issue, f.partner_key, f.detail["by"]) for f in found] == [("s030", LEAK, "s003", "content")]
    assert found[0].score > 0.999
    assert block_means(np.ones((5, 5)), 48).shape == (48 * 48,) and not block_means(np.ones((5, 5)), 48).any()
    assert block_means(images[3], 48) @ block_means(images[30], 48) > 0.999 > block_means(images[3], 48) @ block_means(images[5], 48)


def test_the_audit_confirms_joint_space_copies_by_content_in_every_modality_that_has_it():
    """audit_space hands the content vectors to the joint-space route: a pair near in the joint space is a near
    duplicate only if every modality with content vectors (image and range here) is near in content too."""
    import json

    from jointspace.audit.run import Settings, audit_space

    rng = np.random.default_rng(0)
    n = 40
    base = rng.normal(size=(n, 16))
    emb = {m: base + 0.3 * rng.normal(size=(n, 16)) for m in ("image", "lidar", "text")}
    for e in emb.values():
        e[10] = e[5] + 0.01 * rng.normal(size=16)  # 10 is 5 again, in the joint space
    images = [rng.integers(0, 255, (24, 24, 3)).astype(np.uint8) for _ in range(n)]
    scans = [rng.random((8, 30)).astype(np.float32) for _ in range(n)]
    captions = [f"caption {i}" for i in range(n)]
    kinds = {"image": "image", "lidar": "range", "text": "text"}

    def audited(images, scans):
        values = {"image": images, "lidar": scans, "text": captions}
        space = Space([f"s{i:03d}" for i in range(n)], np.array(["train"] * n, dtype=object), np.zeros(n, dtype=np.int64),
                      {m: _unit(e) for m, e in emb.items()}, kinds,
                      hashes={m: np.array([content_hash(v) for v in vals], dtype=object) for m, vals in values.items()},
                      values=values)
        found, summary, _ = audit_space(space, Settings(finders=("near", "mismatch")))
        json.dumps(summary)  # audit.json takes it as it is
        return {(f.key, f.partner_key, f.detail["by"]) for f in found if f.issue == NEAR}

    assert audited(images, scans) == set()  # distinct content: not a copy, however close the run put them
    copied = images[:10] + [images[5]] + images[11:]
    assert audited(copied, scans) == set()  # the range scans still differ
    assert audited(copied, scans[:10] + [scans[5] * 1.0001] + scans[11:]) == {("s010", "s005", "joint space")}
