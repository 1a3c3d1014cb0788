""""kind" means a data kind only: the head's `type` and the fusion's `strategy` were `kind` before. Configs,
users' YAMLs and run folders written with the former names still load, to the same config and model."""

from __future__ import annotations

import pytest
import torch
import yaml
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.config import ConfigError, apply_overrides, config_from_dict, load_config
from jointspace.run_dir import RunDir
from jointspace.runs import load_run
from jointspace.tasks import config_for, run_config
from jointspace.tasks.classify import ClassifyRunConfig, classifier_predictions, train_classifier
from jointspace.tasks.contrastive import train


def _with_former_names(run, section: list[str], new: str) -> None:
    """Rewrite a run folder's config.yaml as a version before the rename wrote it (`kind:` for `new`)."""
    path = RunDir(run).config
    raw = yaml.safe_load(path.read_text())
    node = raw
    for key in section:
        node = node[key]
    node["kind"] = node.pop(new)
    path.write_text(yaml.safe_dump(raw, sort_keys=False))


def test_a_former_kind_key_loads_to_the_same_config():
    with pytest.warns(FutureWarning, match=r"model\.head\.kind is now called model\.head\.type"):
        old = config_from_dict({"model": {"head": {"kind": "mlp", "hidden": 32}}})
    assert old == config_from_dict({"model": {"head": {"type": "mlp", "hidden": 32}}})
    with pytest.warns(FutureWarning, match=r"fusion\.kind is now called fusion\.strategy"):
        old = config_for({"task": "classify", "fusion": {"kind": "early", "merge": "add"}}, "old.yaml")
    assert old == config_for({"task": "classify", "fusion": {"strategy": "early", "merge": "add"}}, "new.yaml")
    with pytest.warns(FutureWarning):  # `--set fusion.kind=...` as users typed it
        assert config_for(apply_overrides({"task": "classify"}, ["fusion.kind=late"]), "c").fusion.strategy == "late"


def test_a_user_yaml_with_former_names_loads(tmp_path):
    path = tmp_path / "old.yaml"
    path.write_text("task: classify\nmodel:\n  head: {kind: none}\n  embed_dim: 8\nfusion:\n  kind: transformer\n")
    with pytest.warns(FutureWarning):
        cfg = load_config(path, model=ClassifyRunConfig)
    assert cfg.model.head.type == "none" and cfg.fusion.strategy == "transformer"


def test_both_names_at_once_is_an_error_naming_them():
    with pytest.raises(ConfigError, match=r"model\.head: .*model\.head\.kind is the former name of model\.head\.type"):
        config_from_dict({"model": {"head": {"kind": "mlp", "type": "linear"}}})
    with pytest.raises(ConfigError, match=r"fusion\.kind is the former name of fusion\.strategy"):
        config_for({"task": "classify", "fusion": {"kind": "late", "strategy": "late"}}, "c.yaml")


def test_a_run_folder_written_with_head_kind_loads_and_evaluates(tiny_cfg):
    run = train(tiny_cfg("model.head.type=mlp", "model.head.hidden=8", epochs=1), show_progress=False)
    cfg, model, _ = load_run(run)
    _with_former_names(run, ["model", "head"], "type")
    assert "kind: mlp" in RunDir(run).config.read_text()
    with pytest.warns(FutureWarning):
        old_cfg, old_model, _ = load_run(run)
    assert old_cfg == cfg and old_cfg.model.head.type == "mlp"
    want, got = model.state_dict(), old_model.state_dict()
    assert want.keys() == got.keys() and all(torch.equal(want[k], got[k]) for k in want)
    result = CliRunner().invoke(app, ["eval", str(run)])
    assert result.exit_code == 0, result.output
    assert RunDir(run).read_eval()


def test_a_classifier_run_folder_written_with_fusion_kind_still_predicts(shapes_dir, tmp_path):
    cfg = load_config(None, model=ClassifyRunConfig, overrides=[
        f"output_dir={tmp_path}", "name=clf", f"data.path={shapes_dir}", "data.modalities=[image, lidar]",
        "data.image_size=16", "model.embed_dim=8", "model.towers.image.name=cnn",
        "model.towers.image.params.channels=[4, 8]", "model.towers.lidar.name=range_cnn",
        "model.towers.lidar.params.channels=[4, 8]", "fusion.strategy=transformer", "fusion.token_dim=8",
        "fusion.heads=2", "fusion.layers=1", "train.epochs=1", "train.batch_size=16", "train.warmup_steps=0",
        "tracker=none"])
    run = train_classifier(cfg, show_progress=False)
    before = classifier_predictions(run, "test")
    _with_former_names(run, ["fusion"], "strategy")
    with pytest.warns(FutureWarning):
        assert run_config(run) == cfg
    after = classifier_predictions(run, "test")
    assert torch.equal(before.predicted, after.predicted)
