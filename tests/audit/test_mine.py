"""`jointspace mine`: the window rules of sentence-transformers' mine_hard_negatives, checked against a
by-hand numpy ranking of the same embeddings (full similarity matrix, plain loops)."""

from __future__ import annotations

import numpy as np
import pytest
from typer.testing import CliRunner

from jointspace.audit.mine import Window, positive_rule, search
from jointspace.cli import app
from jointspace.errors import UsageError

runner = CliRunner()


def by_hand(anchors, candidates, positive_of, w: Window) -> set[tuple[int, int, int]]:
    """(anchor, negative, rank) by plain loops over the full similarity matrix."""
    sims = anchors @ candidates.T
    own = np.einsum("nd,nd->n", anchors, candidates)
    out = set()
    for i in range(len(anchors)):
        order = sorted(range(len(candidates)), key=lambda j: -sims[i, j])
        others = [j for j in order if not positive_of(i, j)][:w.top]
        kept = []
        for j in others:
            s = sims[i, j]
            if w.max_score is not None and s > w.max_score:
                continue
            if w.margin is not None and s > own[i] - w.margin:
                continue
            if w.relative_margin is not None and s > own[i] - abs(own[i]) * w.relative_margin:
                continue
            kept.append(j)
        out |= {(i, j, order.index(j)) for j in kept[w.range_min:w.range_min + w.num_negatives]}
    return out


def _unit(x):
    return (x / np.linalg.norm(x, axis=1, keepdims=True)).astype(np.float32)


@pytest.mark.parametrize("window", [
    Window(num_negatives=2),
    Window(range_min=3, range_max=12, num_negatives=4),
    Window(margin=0.05, num_negatives=3),
    Window(relative_margin=0.1, max_score=0.5, range_min=1, num_negatives=2),
])
def test_search_keeps_the_window_of_a_by_hand_ranking(window):
    rng = np.random.default_rng(0)
    anchors, candidates = _unit(rng.normal(size=(40, 8))), _unit(rng.normal(size=(40, 8)))
    candidates = _unit(candidates + 1.5 * anchors)  # pairs more alike than the rest
    labels = rng.integers(0, 5, size=40)

    def rule(a_rows, c_rows):  # same sample or same label
        return (a_rows[:, None] == c_rows) | (labels[a_rows][:, None] == labels[c_rows])

    a, n, rank, score = search(anchors, candidates, rule, window)
    got = set(zip(a.tolist(), n.tolist(), rank.tolist(), strict=True))
    assert got == by_hand(anchors, candidates, lambda i, j: i == j or labels[i] == labels[j], window)
    assert np.allclose(score, np.einsum("nd,nd->n", anchors[a], candidates[n]), atol=1e-5)
    assert len(got) > 0 and all(labels[i] != labels[j] for i, j, _ in got)


def test_a_copy_of_the_anchors_own_candidate_is_never_its_negative():
    """Under instance positives a candidate equal to the anchor's own one (the same caption text of another
    sample) counts as its positive, as sentence-transformers drops repeated texts before mining; it is the
    hardest "negative" otherwise (score equal to the positive's)."""
    from types import SimpleNamespace

    import torch

    tokens = torch.tensor([[5, 6, 0], [7, 8, 0], [9, 9, 9], [5, 6, 0]])  # sample 3's caption is sample 0's
    data = SimpleNamespace(labels=torch.tensor([0, 1, 2, 3]), inputs={"text": tokens})
    rows = np.arange(4)
    expected = np.eye(4, dtype=bool)
    expected[0, 3] = expected[3, 0] = True  # by hand: the two equal captions
    assert (positive_rule(data, "instance", "text", "text")(rows, np.tile(rows, (4, 1))) == expected).all()
    assert (positive_rule(data, "instance", "text")(rows, np.tile(rows, (4, 1))) == np.eye(4, dtype=bool)).all()
    rng = np.random.default_rng(1)
    anchors = _unit(rng.normal(size=(4, 8)))
    candidates = _unit(rng.normal(size=(4, 8)) + 3 * anchors)
    candidates[3] = candidates[0]  # equal captions embed alike
    a, n, _, _ = search(anchors, candidates, positive_rule(data, "instance", "text", "text"), Window(num_negatives=3))
    got = set(zip(a.tolist(), n.tolist(), strict=True))
    assert (0, 3) not in got and (3, 0) not in got and len(got) == 2 + 3 + 3 + 2  # 1 and 2: every other one


def test_window_refuses_an_empty_window():
    with pytest.raises(UsageError, match="--range-max 3 leaves 1 candidates"):
        Window(range_min=2, range_max=3, num_negatives=2)


def test_mine_cli_writes_the_run_spaces_negatives(tiny_run, digits_dir, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    from jointspace.evaluate.embed import embed_split
    from jointspace.runs import load_run, load_run_split

    out = tmp_path / "negatives.parquet"
    done = runner.invoke(app, ["mine", str(tiny_run), str(digits_dir), "--out", str(out), "--range-min", "1",
                               "--num-negatives", "2", "--margin", "0.0"])
    assert done.exit_code == 0, done.output
    table = pq.read_table(out).to_pydict()
    assert list(table) == ["anchor_key", "negative_key", "rank", "score", "positive_score", "anchor_modality",
                           "candidate_modality"]
    assert set(table["anchor_modality"]) == {"image"} and set(table["candidate_modality"]) == {"text"}

    cfg, model, info = load_run(tiny_run)  # the same space, ranked by hand
    data = load_run_split(cfg, info, digits_dir, "train", ["image", "text"])
    emb = {m: e.numpy() for m, e in embed_split(model, data).items()}
    labels = data.labels.numpy()
    window = Window(range_min=1, margin=0.0, num_negatives=2)
    expected = by_hand(emb["image"], emb["text"], lambda i, j: i == j or labels[i] == labels[j], window)
    keys, text = data.keys, data.captions["text"]  # equal captions tie: compared by caption, not key
    got = {(keys.index(a), text[keys.index(n)], r) for a, n, r in zip(table["anchor_key"], table["negative_key"],
                                                                     table["rank"], strict=True)}
    assert got == {(i, text[j], r) for i, j, r in expected} and len(table["rank"]) == len(expected) > 0
    own = {keys[i]: float(emb["image"][i] @ emb["text"][i]) for i in range(len(keys))}
    assert all(abs(p - own[a]) < 1e-5 and s <= p + 1e-6 for a, s, p in
               zip(table["anchor_key"], table["score"], table["positive_score"], strict=True))
    anchors_with = len(set(table["anchor_key"]))
    assert (f"{len(keys)} anchors, {len(expected)} negatives, {len(keys) - anchors_with} anchors with none"
            in " ".join(done.output.split()))

    again = runner.invoke(app, ["mine", str(tiny_run), str(digits_dir), "--out", str(out)])
    assert again.exit_code == 2 and "--overwrite" in again.output
