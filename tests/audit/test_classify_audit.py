"""`jointspace audit` of a classify run (no joint space): exact duplicates, and label issues that cleanlab
finds from the run's own classifier's probabilities; the finders that need a joint space are said to."""

from __future__ import annotations

import json

import numpy as np
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.config import load_config
from jointspace.tasks.classify import (
    ClassifyRunConfig,
    classifier_predictions,
    classifier_probabilities,
    train_classifier,
)

from .conftest import read_split

runner = CliRunner()


def test_a_classify_run_audits_with_its_own_classifier(shapes_dir, tmp_path):
    from cleanlab.filter import find_label_issues

    from jointspace.data.shards import read_info, write_dataset

    info = read_info(shapes_dir)
    splits = {s: read_split(shapes_dir, s) for s in info["splits"]}
    splits["train"] = [*splits["train"], {**splits["train"][0], "key": "dup-0"}]
    rng, original = np.random.default_rng(0), splits["train"][1]
    noisy = {"image": np.clip(np.round(original["image"] + rng.normal(0, 2, original["image"].shape)), 0, 255)
             .astype(np.uint8), "lidar": original["lidar"] + 0.01 * original["lidar"].std()
             * rng.normal(size=original["lidar"].shape).astype(original["lidar"].dtype)}
    splits["test"] = [*splits["test"], {**original, **noisy, "key": "near-1"}]
    data = tmp_path / "faulty"
    write_dataset(data, splits, info["modalities"], info["class_names"])
    cfg = load_config(None, model=ClassifyRunConfig, overrides=[
        f"output_dir={tmp_path}", "name=clf", f"data.path={data}", "data.modalities=[image, lidar]",
        "data.image_size=16", "model.embed_dim=8", "model.towers.image.name=cnn",
        "model.towers.image.params.channels=[4, 8]", "model.towers.lidar.name=range_cnn",
        "model.towers.lidar.params.channels=[4, 8]", "fusion.strategy=late", "train.epochs=2",
        "train.batch_size=16", "train.warmup_steps=0", "tracker=none"])
    run = train_classifier(cfg, show_progress=False)

    out = tmp_path / "audit"
    done = runner.invoke(app, ["audit", str(run), str(data), "--out", str(out), "--split", "train"])
    assert done.exit_code == 0, done.output
    result = json.loads((out / "audit.json").read_text())
    assert result["finders_run"] == ["exact", "near", "label"]
    assert result["labels"]["probabilities"] == "the run's classifier"
    rows = result["findings"]
    assert ("dup-0", "duplicate") in {(r["key"], r["issue"]) for r in rows}

    everywhere = tmp_path / "audit-all"
    done = runner.invoke(app, ["audit", str(run), str(data), "--out", str(everywhere), "--finders", "near"])
    assert done.exit_code == 0, done.output
    near = [r for r in json.loads((everywhere / "audit.json").read_text())["findings"]]
    assert [(r["key"], r["issue"], r["partner_key"], r["detail"]["by"]) for r in near] == \
        [("near-1", "leak", original["key"], "content")]  # the noisy copy, by content; the exact one is not near

    (_, train, probs), = classifier_probabilities(run, data, ["train"])
    assert np.allclose(probs.sum(1), 1.0) and probs.shape == (len(train), len(info["class_names"]))
    issues = find_label_issues(train.labels.numpy(), probs, return_indices_ranked_by="self_confidence")
    assert len(issues) and [r["key"] for r in rows if r["issue"] == "label"] == [train.keys[i] for i in issues]
    assert np.array_equal(classifier_predictions(run, "train").predicted.numpy(), probs.argmax(1))
    names = info["class_names"]
    assert all(r["suggested"] == names[int(probs[train.keys.index(r["key"])].argmax())] for r in rows
               if r["issue"] == "label")

    bad = runner.invoke(app, ["audit", str(run), str(data), "--out", str(tmp_path / "x"), "--finders", "mismatch,outlier"])
    assert bad.exit_code == 2 and "no joint space" in bad.output and not (tmp_path / "x").exists()
    bad = runner.invoke(app, ["audit", str(run), str(data), "--out", str(tmp_path / "x"), "--refit", "2"])
    assert bad.exit_code == 2 and "--refit retrains a run with a joint space, not a classifier" in bad.output
    assert not (tmp_path / "x").exists() and not list(tmp_path.glob(".refit-*"))
