"""Every task resumes exactly: a run cut after a checkpoint and resumed ends with the weights of a run
trained straight through, and its metrics log holds every step once. (Contrastive: test_contrastive.py;
diffusion: tests/augment/test_train.py; CILP: test_cilp.py.)"""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from jointspace.config import load_config
from jointspace.tasks.classify import train_classifier
from jointspace.tasks.metric import train_metric

COMMON = ["tracker=none", "data.image_size=16", "model.embed_dim=8", "model.towers.image.name=cnn",
          "model.towers.image.params.channels=[4, 8]", "model.towers.image.params.dropout=0.3",
          "train.epochs=3", "train.batch_size=16", "train.warmup_steps=0", "train.log_every=1",
          "train.keep_checkpoints=10", "train.checkpoint_every_steps=5"]


def cut_copy(run: Path, checkpoint: str, name: str) -> Path:
    """The run folder as if the run had been killed right after `checkpoint` was written."""
    half = run.parent / name
    shutil.copytree(run, half)
    for f in ("model.safetensors", "done.json"):
        (half / f).unlink(missing_ok=True)
    ckpts = half / "checkpoints"
    (ckpts / "latest.json").write_text(json.dumps({"name": checkpoint}))
    for p in ckpts.iterdir():
        if p.is_dir() and p.stat().st_mtime > (ckpts / checkpoint).stat().st_mtime:
            shutil.rmtree(p)
    return half


def assert_same_weights(a: Path, b: Path) -> None:
    wa, wb = load_file(str(a / "model.safetensors")), load_file(str(b / "model.safetensors"))
    assert wa.keys() == wb.keys()
    for k in wa:
        torch.testing.assert_close(wa[k], wb[k], rtol=0, atol=1e-6, msg=k)


def train_steps(run: Path) -> list[int]:
    rows = [json.loads(x) for x in (run / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in rows if r["split"] == "train"]


@pytest.mark.parametrize("checkpoint", ["epoch_0001", "step_0000005"])
def test_classifier_resumes_exactly(shapes_dir, tmp_path, checkpoint):
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=full", f"data.path={shapes_dir}", *COMMON,
                             "data.modalities=[image, lidar]", "model.towers.lidar.name=range_cnn",
                             "model.towers.lidar.params.channels=[4, 8]", "fusion.kind=late", "fusion.dropout=0.3"])
    full = train_classifier(cfg, show_progress=False)
    half = cut_copy(full, checkpoint, "half")
    resumed = train_classifier(cfg.model_copy(update={"name": "half"}), resume=True, show_progress=False)
    assert_same_weights(full, resumed)
    assert train_steps(resumed) == train_steps(full) == list(range(1, 10))
    assert json.loads((half / "done.json").read_text())["test_accuracy"] == \
        json.loads((full / "done.json").read_text())["test_accuracy"]


def test_metric_learning_resumes_exactly(shapes_dir, tmp_path):
    cfg = load_config(None, [f"output_dir={tmp_path}", "name=full", f"data.path={shapes_dir}", *COMMON,
                             "data.modalities=[image]", "metric.loss.name=ArcFaceLoss", "metric.miner=null",
                             "metric.plot=none"])
    full = train_metric(cfg, show_progress=False)
    cut_copy(full, "step_0000005", "half")
    resumed = train_metric(cfg.model_copy(update={"name": "half"}), resume=True, show_progress=False)
    assert_same_weights(full, resumed)  # tower and the loss's class centres
    assert train_steps(resumed) == list(range(1, 10))
