"""Fusion classifier loop: run folder contents, per-class report, trackers (TensorBoard; W&B offline)."""

import json

import pytest
import yaml

from jointspace.config import load_config
from jointspace.tasks.classify import ClassifyRunConfig, train_classifier


def _cfg(shapes_dir, tmp_path, *extra):
    return load_config(None, model=ClassifyRunConfig, overrides=[
        f"output_dir={tmp_path}", "name=clf", f"data.path={shapes_dir}", "data.modalities=[image, lidar]",
        "data.image_size=16", "model.embed_dim=8", "model.towers.image.name=cnn",
        "model.towers.image.params.channels=[4, 8]", "model.towers.lidar.name=range_cnn",
        "model.towers.lidar.params.channels=[4, 8]", "fusion.strategy=transformer", "fusion.token_dim=8",
        "fusion.heads=2", "fusion.layers=1", "fusion.channels=[4, 8]", "train.epochs=2", "train.batch_size=16", "train.warmup_steps=0",
        "train.log_every=1", *extra])


def test_classifier_run_folder_and_tensorboard(shapes_dir, tmp_path):
    run = train_classifier(_cfg(shapes_dir, tmp_path, "tracker=tensorboard"), show_progress=False)
    done = json.loads((run / "done.json").read_text())
    for key in ("test_accuracy", "val_loss", "n_params", "seconds_per_epoch", "peak_mem_mb"):
        assert done[key] is not None, key
    report = json.loads((run / "classification_test.json").read_text())
    assert set(report["per_class"]) >= {"cube", "sphere", "cylinder", "cone", "macro avg"}
    assert {"precision", "recall", "f1-score"} <= set(report["per_class"]["cube"])
    assert "precision" in (run / "classification_test.txt").read_text()
    assert (run / "plots" / "confusion_test.png").exists() and any((run / "tb").iterdir())
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["epoch"] for r in records if r["split"] == "val"] == [1, 2]
    with pytest.raises(FileExistsError, match="--overwrite"):
        train_classifier(_cfg(shapes_dir, tmp_path), show_progress=False)


def test_cli_classify_with_wandb_offline(shapes_dir, tmp_path, monkeypatch):
    """`jointspace classify --tracker wandb` logs to an offline W&B run (no network) inside the run folder."""
    pytest.importorskip("wandb")
    from typer.testing import CliRunner

    from jointspace.cli import app

    monkeypatch.setenv("WANDB_MODE", "offline")
    monkeypatch.setenv("WANDB_SILENT", "true")
    config = tmp_path / "clf.yaml"
    config.write_text(yaml.safe_dump(_cfg(shapes_dir, tmp_path, "train.epochs=1").model_dump(mode="json")))
    result = CliRunner().invoke(app, ["classify", str(config), "--tracker", "wandb", "--set", "fusion.strategy=early"])
    assert result.exit_code == 0, result.output
    assert "top-1" in result.output and "recall" in result.output
    run = tmp_path / "clf"
    offline = list((run / "wandb").glob("offline-run-*"))
    assert offline and any(offline[0].glob("*.wandb"))
    assert yaml.safe_load((run / "config.yaml").read_text())["tracker"] == "wandb"


def test_classifier_draws_batches_from_weighted_sources(shapes_dir, tmp_path):
    """data.sources + data.resampled: epochs have samples_per_epoch samples drawn by source weight."""
    run = train_classifier(_cfg(shapes_dir, tmp_path, "tracker=none", "train.epochs=1", "data.resampled=true",
                                "data.samples_per_epoch=48",
                                f"data.sources=[{{path: {shapes_dir}}}, {{path: {shapes_dir}, weight: 3}}]"),
                           show_progress=False)
    records = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if r["split"] == "train"] == [1, 2, 3]
