"""Metric learning: PML losses x miners built by name, a training step that mines and learns, end to end."""

import json

import pytest
import torch
from torch import nn

from jointspace.fusion import ModalityEncoders
from jointspace.losses import build_metric_loss
from jointspace.tasks.metric import ComponentConfig, MetricConfig, knn_metrics, metric_step


class _Identity(nn.Module):
    out_dim = 8

    def forward(self, x, lengths=None):
        return x


def test_losses_and_miners_are_pml_classes_built_by_name():
    from pytorch_metric_learning import distances, losses, miners

    loss, miner = build_metric_loss(MetricConfig(), embedding_size=8, num_classes=3)
    assert type(loss) is losses.TripletMarginLoss and type(miner) is miners.TripletMarginMiner
    assert miner.type_of_triplets == "hard"
    arc, none = build_metric_loss(MetricConfig(loss=ComponentConfig(name="ArcFaceLoss"), miner=None), 8, 3)
    assert type(arc) is losses.ArcFaceLoss and none is None and arc.W.shape == (8, 3)
    cfg = MetricConfig(loss=ComponentConfig(name="SupConLoss", params={"temperature": 0.2}),
                       miner=ComponentConfig(name="MultiSimilarityMiner"),
                       distance=ComponentConfig(name="CosineSimilarity"))
    sup, ms = build_metric_loss(cfg, 8, 3)
    assert isinstance(sup.distance, distances.CosineSimilarity) and isinstance(ms.distance, distances.CosineSimilarity)
    with pytest.raises(ValueError, match="metric.loss.name: unknown .*TripletMarginLoss"):
        build_metric_loss(MetricConfig(loss=ComponentConfig(name="TripletLoss")), 8, 3)
    with pytest.raises(ValueError, match="metric.miner"):
        build_metric_loss(MetricConfig(miner=ComponentConfig(name="TripletMarginMiner", params={"bogus": 1})), 8, 3)


def test_metric_step_mines_and_the_loss_decreases_on_separable_data():
    """Classes separable in 2 of 8 dims, hidden under larger noise in the other 6: at first hard triplets
    abound; a linear embedding learns to keep the 2 informative dims, the loss falls."""
    torch.manual_seed(0)
    centres = torch.tensor([[2.0, 0.0], [-1.0, 1.7], [-1.0, -1.7]])
    labels = torch.arange(96) % 3
    x = torch.cat([centres[labels] + 0.2 * torch.randn(96, 2), 2.0 * torch.randn(96, 6)], dim=1)
    model = ModalityEncoders(nn.ModuleDict({"x": _Identity()}), nn.ModuleDict({"x": nn.Linear(8, 4)}))
    loss_fn, miner = build_metric_loss(MetricConfig(), 4, 3)
    calls = []
    real_forward = miner.forward
    miner.forward = lambda *a, **k: calls.append(1) or real_forward(*a, **k)
    opt = torch.optim.SGD(model.parameters(), lr=0.5)
    losses, mined = [], []
    for _ in range(30):
        opt.zero_grad()
        loss, n = metric_step(model, "x", loss_fn, miner, {"x": x, "label": labels})
        opt.step()
        losses.append(float(loss))
        mined.append(n)
    assert len(calls) == 30 and mined[0] > 0
    assert losses[-1] < 0.5 * losses[0], losses
    emb = nn.functional.normalize(model({"x": x})["x"].detach(), dim=-1)
    assert knn_metrics(emb[:60], labels[:60], emb[60:], labels[60:], k=3)["knn3_accuracy"] == 1.0


def test_train_metric_arcface_end_to_end(shapes_dir, tmp_path):
    """ArcFace's class centres are optimised (their own param group) and saved; k-NN eval and a 2-D plot."""
    from jointspace.config import load_config
    from jointspace.tasks.metric import MetricInfo, MetricRunConfig, train_metric
    from jointspace.tasks.registry import task_info

    cfg = load_config(None, model=MetricRunConfig, overrides=[
        f"output_dir={tmp_path}", "name=arc", f"data.path={shapes_dir}", "data.modalities=[image]",
        "data.image_size=16", "model.embed_dim=8", "model.towers.image.name=cnn",
        "model.towers.image.params.channels=[4, 8]", "metric.loss.name=ArcFaceLoss", "metric.miner=null",
        "metric.loss_lr=0.05", "metric.plot=pca", "train.epochs=2", "train.batch_size=16", "train.warmup_steps=0",
        "tracker=none"])
    run = train_metric(cfg, show_progress=False)
    done = json.loads((run / "done.json").read_text())
    assert {"test_accuracy", "precision_at_1", "mean_average_precision_at_r", "val_loss"} <= set(done)
    assert 0.0 <= done["test_accuracy"] <= 1.0 and done["miner"] is None
    assert (run / "plots" / "pca_test.png").exists() and (run / "eval" / "embeddings_test.npz").exists()
    info = task_info(run)  # run.json's metric part, typed
    assert isinstance(info, MetricInfo) and info.modality == "image" and info.input_shape == [3, 16, 16]
    from safetensors.torch import load_file

    first = load_file(str(run / "checkpoints" / "epoch_0001" / "model.safetensors"))["loss.W"]
    last = load_file(str(run / "model.safetensors"))["loss.W"]
    assert not torch.equal(first, last)  # the loss's own parameters were trained
