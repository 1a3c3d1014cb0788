"""CILP end to end on tiny shapes: pretraining, projector, classifier from RGB alone; table keys and files."""

import json

import pytest
import torch
from safetensors.torch import load_file

from jointspace.config import load_config
from jointspace.tasks.cilp import cilp_table, run_cilp


@pytest.fixture(scope="module")
def shapes_dir(tmp_path_factory):
    from jointspace.data.builtin import synthesize

    root = tmp_path_factory.mktemp("shards") / "shapes"
    synthesize("shapes", root, seed=0, n=84, maxcount=100)
    return root


def test_cilp_end_to_end(shapes_dir, tmp_path):
    cfg = load_config(None, [
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
