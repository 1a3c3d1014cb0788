"""CILP end to end on tiny shapes: pretraining, projector, classifier from RGB alone; table keys and files."""

import json

import pytest
import torch
from safetensors.torch import load_file

from jointspace.config import load_config
from jointspace.tasks.cilp import CILPRunConfig, cilp_table, run_cilp


def test_cilp_end_to_end(shapes_dir, tmp_path):
    cfg = load_config(None, model=CILPRunConfig, overrides=[
        f"output_dir={tmp_path}", "name=cilp", "tracker=none", f"data.path={shapes_dir}",
        "data.modalities=[image, lidar, text]", "data.image_size=16", "model.embed_dim=8",
        "model.towers.image.name=cnn", "model.towers.image.params.channels=[4, 8]",
        "model.towers.lidar.name=range_cnn", "model.towers.lidar.params.channels=[4, 8]",
        "loss.positives=instance", "train.epochs=1", "train.batch_size=16", "train.warmup_steps=0",
        "cilp.projector_hidden=16", "cilp.projector_epochs=3", "cilp.classifier_hidden=0", "cilp.classifier_epochs=3",
        "cilp.batch_size=16"])
    result = run_cilp(cfg, show_progress=False)
    root = tmp_path / "cilp"
    table = result["table"]
    assert set(table) == {"seed", "val_loss", "projector_mse", "classifier_accuracy"}
    assert table["val_loss"] > 0 and table["projector_mse"] >= 0 and 0 <= table["classifier_accuracy"] <= 1
    assert json.loads((root / "cilp.json").read_text())["table"] == table
    pre = json.loads((root / "pretrain" / "run.json").read_text())
    assert list(pre["kinds"]) == ["image", "lidar"]  # pretraining binds the two modalities only
    proj = load_file(str(root / "projector.safetensors"))
    assert proj["0.weight"].shape == (16, 8) and proj["2.weight"].shape == (8, 16)  # embed -> hidden -> embed
    assert load_file(str(root / "classifier.safetensors"))["weight"].shape == (4, 8)  # LiDAR emb -> 4 classes
    report = json.loads((root / "classification_test_projected.json").read_text())
    assert report["n_samples"] == 13 and torch.tensor(report["confusion_matrix"]).sum() == 13
    assert (root / "plots" / "confusion_test_projected.png").exists()
    assert "| 0 |" in cilp_table([table]) and (root / "cilp.md").exists()
    with pytest.raises(FileExistsError):
        run_cilp(cfg, show_progress=False)


def _learning_cfg(shapes_300, tmp_path, name="cilp-learn"):
    return load_config(None, model=CILPRunConfig, overrides=[
        f"output_dir={tmp_path}", f"name={name}", "tracker=none", f"data.path={shapes_300}",
        "data.modalities=[image, lidar]", "data.image_size=24", "model.embed_dim=16",
        "model.towers.image.name=cnn", "model.towers.image.params.channels=[16, 32]",
        "model.towers.lidar.name=range_cnn", "model.towers.lidar.params.channels=[16, 32]",
        "loss.positives=label", "train.epochs=15", "train.batch_size=16", "train.warmup_steps=0", "train.lr=0.003",
        "cilp.projector_hidden=32", "cilp.projector_epochs=20", "cilp.projector_lr=0.01",
        "cilp.classifier_hidden=0", "cilp.classifier_epochs=30", "cilp.classifier_lr=0.03", "cilp.batch_size=16"])


@pytest.fixture(scope="module")
def shapes_300(tmp_path_factory):
    from jointspace.data.builtin import synthesize

    root = tmp_path_factory.mktemp("shards") / "shapes300"
    synthesize("shapes", root, seed=0, n=300, maxcount=100)
    return root


def test_cilp_classifies_from_rgb_alone_well_above_chance(shapes_300, tmp_path):
    """4 classes (chance 0.25), 45 test scenes (one standard error at chance: 0.065): RGB -> projector ->
    LiDAR classifier must reach 0.45, the LiDAR embeddings themselves 0.6."""
    result = run_cilp(_learning_cfg(shapes_300, tmp_path), show_progress=False)
    assert result["table"]["classifier_accuracy"] >= 0.45, result["table"]
    assert result["classifier_accuracy_on_lidar"] >= 0.6, result


def test_cilp_resumes_exactly_inside_a_stage(shapes_dir, tmp_path):
    """Killed after the classifier stage's epoch-4 checkpoint (of 8) and resumed == run straight through."""
    import shutil

    cfg = load_config(None, model=CILPRunConfig, overrides=[
        f"output_dir={tmp_path}", "name=full", "tracker=none", f"data.path={shapes_dir}",
        "data.modalities=[image, lidar]", "data.image_size=16", "model.embed_dim=8",
        "model.towers.image.name=cnn", "model.towers.image.params.channels=[4, 8]",
        "model.towers.lidar.name=range_cnn", "model.towers.lidar.params.channels=[4, 8]",
        "train.epochs=1", "train.batch_size=16", "cilp.projector_hidden=16", "cilp.projector_epochs=4",
        "cilp.classifier_hidden=8", "cilp.classifier_epochs=8", "cilp.batch_size=16"])
    full = run_cilp(cfg, show_progress=False)
    cut = tmp_path / "cut"
    shutil.copytree(tmp_path / "full", cut)
    for f in ("done.json", "cilp.json", "classifier.safetensors", "classifier/done.json", "classifier/model.safetensors"):
        (cut / f).unlink()
    ckpts = cut / "classifier" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir() if p.is_dir()) == ["epoch_0006", "epoch_0008"]
    shutil.rmtree(ckpts / "epoch_0008")
    (ckpts / "latest.json").write_text(json.dumps({"name": "epoch_0006"}))
    again = run_cilp(cfg.model_copy(update={"name": "cut"}), resume=True, show_progress=False)
    a, b = load_file(str(tmp_path / "full" / "classifier.safetensors")), load_file(str(cut / "classifier.safetensors"))
    for k in a:
        torch.testing.assert_close(a[k], b[k], rtol=0, atol=1e-6)
    assert again["table"]["classifier_accuracy"] == full["table"]["classifier_accuracy"]
    assert again["classifier_loss_history"] == pytest.approx(full["classifier_loss_history"], abs=1e-6)
