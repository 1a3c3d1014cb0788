"""`jointspace audit --refit K`: the train split's folds, and each train sample judged by the run that did not
train on it (hand-built spaces: a swap and a flipped label the audited run fitted), and the command end to end."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from typer.testing import CliRunner

from jointspace.audit.labels import label_issues
from jointspace.audit.mismatch import mismatch_scores, mismatched_pairs
from jointspace.audit.neighbours import knn
from jointspace.audit.refit import Refit, fold_of, held_keys
from jointspace.audit.space import Space
from jointspace.cli import app

from .test_finders import _space

runner = CliRunner()


def test_folds_cover_the_train_split_keep_copies_together_and_leave_other_splits_out():
    n = 40
    splits = ["val"] * 5 + ["train"] * 30 + ["val"] * 5  # train rows need not come first
    space = _space({"image": np.random.default_rng(0).normal(size=(n, 4))}, splits=splits)
    copies = [(5 + i, 20 + i) for i in range(8)]  # 8 exact copies within train
    for i, j in copies:
        space.hashes["image"][j] = space.hashes["image"][i]
    for seed in range(5):
        fold = fold_of(space, 3, seed)
        assert (fold[:5] == -1).all() and (fold[35:] == -1).all() and set(fold[5:35].tolist()) == {0, 1, 2}
        assert all(fold[i] == fold[j] for i, j in copies)  # a chance grouping: (1/3)^8
        held = held_keys(space, fold)
        assert sorted(k for keys in held for k in keys) == space.keys[5:35]
        assert (fold_of(space, 3, seed) == fold).all()  # seeded
    with pytest.raises(ValueError, match="--refit 12: needs at least 2 folds and 2 distinct train samples a fold"):
        fold_of(space, 12)  # 30 train samples, 22 distinct


def _eye(rows: list[int], d: int = 8) -> np.ndarray:
    return np.eye(d, dtype=np.float32)[rows]


def _fitted_swap() -> tuple[Space, Refit]:
    """8 train samples (folds 0,0,0,0,1,1,1,1) and 2 val; the audited run fitted every pair (text = image).
    The run trained without fold 0 puts sample 3's text at (e0 - e3) / sqrt(2): the text of sample 0's image."""
    rows = list(range(8)) + [5, 6]
    space = _space({"image": _eye(rows), "text": _eye(rows)}, splits=["train"] * 8 + ["val"] * 2)
    space.logit_scale = 10.0
    text = _eye(list(range(8)))
    text[3] = np.array([1, 0, 0, -1, 0, 0, 0, 0], dtype=np.float32) / math.sqrt(2)
    fold0 = _space({"image": _eye(list(range(8))), "text": text})
    fold1 = _space({"image": _eye(list(range(8))), "text": _eye(list(range(8)))})
    fold0.logit_scale = fold1.logit_scale = 10.0
    return space, Refit(np.array([0, 0, 0, 0, 1, 1, 1, 1, -1, -1]), [fold0, fold1])


def test_a_swap_the_run_fitted_is_found_by_the_mean_with_the_run_that_did_not_train_on_it():
    space, refit = _fitted_swap()
    assert np.allclose(mismatch_scores(space, "image", "text", beaten_by=1)[0], 0.0, atol=1e-6)  # audited run: fitted
    margin, best, _ = refit.scores(space, "image", "text", beaten_by=1)
    # sample 3 on fold 0's run, among fold 0's samples: its image (e3) meets the texts e0, e1, e2 at 0 and its
    # own at -1/sqrt(2); its text meets image e0 at 1/sqrt(2), its own at -1/sqrt(2): min(0, 0) - (-0.707)
    # = 0.707, x 10 = 7.07 nats; the audited run's 0: the mean 3.54, above ln 10; its partner: fold 0's e0
    assert margin[3] == pytest.approx(10 / math.sqrt(2) / 2, abs=1e-5)
    assert np.allclose(np.delete(margin, 3), 0.0, atol=1e-6) and best[3] == 0

    assert mismatched_pairs(space) == []
    found = mismatched_pairs(space, scores=refit.scores, beaten_by=1)
    assert [(f.key, f.partner_key, f.modality) for f in found] == [("s003", "s000", "image-text")]
    # its rank share: the larger of the audited run's (0: it fitted the swap) and fold 0's (all 3 others beat it)
    assert found[0].score == pytest.approx(3.535534, abs=1e-5) and found[0].detail["rank_share"] == 1.0
    bar = np.full(len(space), np.inf)
    bar[3] = 3.0  # a bar per sample (the class margins' lower bars): ranked where its margin reaches it
    share = refit.scores(space, "image", "text", beaten_by=1, ranked_from=bar)[2]
    assert share[3] == 1.0 and np.all(np.delete(share, 3) == 0.0)
    bar[3] = 4.0
    assert np.all(refit.scores(space, "image", "text", beaten_by=1, ranked_from=bar)[2] == 0.0)


def test_a_flipped_label_the_run_fitted_is_found_on_the_refit_runs():
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 16)) * 3
    labels = np.repeat([0, 1, 2], 30)
    true = centres[labels] + rng.normal(size=(90, 16)) * 0.5
    labels[7] = 1  # sample 7 (of class a) labelled b
    fitted = true.copy()
    fitted[7] = centres[1] + rng.normal(size=16) * 0.5  # the audited run learned the flipped label
    splits = ["train"] * 75 + ["val"] * 15
    space = _space({"image": fitted}, splits=splits, labels=labels)
    fold = fold_of(space, 3)
    refit = Refit(fold, [_space({"image": true[:75]}, labels=labels[:75]) for _ in range(3)])
    _, near = knn(space.joint(), 16)
    for voters in (None, near):  # the probe alone, and with the vote of the neighbours
        in_sample, _ = label_issues(space, neighbours=voters)
        assert "s007" not in {f.key for f in in_sample}  # the audited run put it among class b
        found, about = label_issues(space, probs=refit.probs(space, neighbours=voters))
        assert {f.key: f.suggested for f in found}.get("s007") == "a" and about["accuracy"] > 0.95


def test_audit_refit_trains_a_run_per_fold_and_leaves_no_folder(tiny_run, faulty_digits, tmp_path):
    out = tmp_path / "audit"
    done = runner.invoke(app, ["audit", str(tiny_run), str(faulty_digits), "--out", str(out), "--refit", "2",
                               "--finders", "mismatch,label"])
    assert done.exit_code == 0, done.output
    result = json.loads((out / "audit.json").read_text())
    assert result["refit"]["folds"] == 2 and len(result["refit"]["train_per_fold"]) == 2
    train_rows = [line for line in (out / "samples.csv").read_text().splitlines()[1:] if line.split(",")[1] == "train"]
    assert sum(result["refit"]["train_per_fold"]) == len(train_rows) > 0
    assert "refit run" in result["labels"]["probabilities"] and result["seconds"]["refit"] > 0
    assert not list(tmp_path.glob(".refit-*"))  # the fold runs were this call's own, removed
    bad = runner.invoke(app, ["audit", str(tiny_run), str(faulty_digits), "--out", str(tmp_path / "x"), "--refit", "1"])
    assert bad.exit_code == 2 and "--refit must be 0 (off) or at least 2 folds" in bad.output
    for more, said in ((["--finders", "exact,near"], "--refit changes only the mismatch and label finders"),
                       (["--split", "test"], "add --split train")):
        bad = runner.invoke(app, ["audit", str(tiny_run), str(faulty_digits), "--out", str(tmp_path / "x"),
                                  "--refit", "2", *more])
        assert bad.exit_code == 2 and said in bad.output and not (tmp_path / "x").exists()


def test_refit_needs_a_shard_folder_to_copy(tiny_run, tmp_path):
    from jointspace.data.shards import DataError
    from jointspace.tasks.refit import train_without

    with pytest.raises(DataError, match="--refit retrains on copies of a shard folder"):
        train_without(tiny_run, tmp_path / "images.csv", [{"a"}, {"b"}], tmp_path / "work")
    assert not (tmp_path / "work").exists()


def test_a_fold_run_trains_on_the_copy_whatever_data_the_run_named(tiny_run, tmp_path):
    from jointspace.data.source import FolderSource
    from jointspace.data.sources import source_of
    from jointspace.errors import UsageError
    from jointspace.tasks.refit import _fold_config, _starts_fresh
    from jointspace.tasks.registry import run_config

    cfg = run_config(tiny_run)
    named = cfg.model_copy(update={"data": cfg.data.model_copy(update={
        "csv": "train.csv", "val_csv": "val.csv", "urls": "x-{0..3}.tar", "hard_negatives": "neg.parquet"})})
    copy = tmp_path / "data-0"
    one = _fold_config(named, copy, tmp_path, "fold-0", "cpu")
    source = source_of(one.data)
    assert isinstance(source, FolderSource) and one.data.path == str(copy) and one.data.hard_negatives is None
    assert one.train.device == "cpu" and one.tracker == "none" and one.name == "fold-0"
    _starts_fresh(cfg, tiny_run)
    started = cfg.model_copy(update={"model": cfg.model.model_copy(update={"init_from": "runs/other"})})
    with pytest.raises(UsageError, match="model.init_from starts it from"):
        _starts_fresh(started, tiny_run)
