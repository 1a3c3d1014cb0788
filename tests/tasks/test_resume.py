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
from jointspace.tasks.classify import ClassifyRunConfig, train_classifier
from jointspace.tasks.metric import MetricRunConfig, train_metric

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
    cfg = load_config(None, model=ClassifyRunConfig, overrides=[f"output_dir={tmp_path}", "name=full", f"data.path={shapes_dir}", *COMMON,
                             "data.modalities=[image, lidar]", "model.towers.lidar.name=range_cnn",
                             "model.towers.lidar.params.channels=[4, 8]", "fusion.strategy=late", "fusion.dropout=0.3"])
    full = train_classifier(cfg, show_progress=False)
    half = cut_copy(full, checkpoint, "half")
    resumed = train_classifier(cfg.model_copy(update={"name": "half"}), resume=True, show_progress=False)
    assert_same_weights(full, resumed)
    assert train_steps(resumed) == train_steps(full) == list(range(1, 10))
    assert json.loads((half / "done.json").read_text())["test_accuracy"] == \
        json.loads((full / "done.json").read_text())["test_accuracy"]


def test_metric_learning_resumes_exactly(shapes_dir, tmp_path):
    cfg = load_config(None, model=MetricRunConfig, overrides=[f"output_dir={tmp_path}", "name=full", f"data.path={shapes_dir}", *COMMON,
                             "data.modalities=[image]", "metric.loss.name=ArcFaceLoss", "metric.miner=null",
                             "metric.plot=none"])
    full = train_metric(cfg, show_progress=False)
    cut_copy(full, "step_0000005", "half")
    resumed = train_metric(cfg.model_copy(update={"name": "half"}), resume=True, show_progress=False)
    assert_same_weights(full, resumed)  # tower and the loss's class centres
    assert train_steps(resumed) == list(range(1, 10))


def test_failed_start_leaves_nothing_and_resume_without_checkpoint_starts_fresh(tiny_cfg, tmp_path, capsys):
    from jointspace.data.shards import DataError
    from jointspace.tasks.contrastive import train

    bad = tiny_cfg("data.path=" + str(tmp_path / "nowhere"), name="failed")
    with pytest.raises(DataError):
        train(bad, show_progress=False)
    assert not bad.run_dir.exists()  # the plain rerun is not refused
    cfg = tiny_cfg(name="fresh", epochs=1)
    cfg.run_dir.mkdir(parents=True)  # killed before its first checkpoint: a folder, no checkpoint
    (cfg.run_dir / "config.yaml").write_text("name: fresh\n")  # written first by every run
    (cfg.run_dir / "metrics.jsonl").write_text('{"step": 1, "split": "train", "loss": 9.0}\n')
    run = train(cfg, resume=True, show_progress=False)
    assert "no checkpoint to resume from: starting from scratch" in capsys.readouterr().err
    ref = train(tiny_cfg(name="ref", epochs=1), show_progress=False)
    assert_same_weights(ref, run)
    assert train_steps(run) == train_steps(ref)  # the stale line is gone


def test_skipped_samples_are_said_and_recorded(digits_dir, tiny_cfg, tmp_path, capsys):
    """One truncated shard: the loss is printed once per split, and run.json and the report carry it."""
    from jointspace.tasks.contrastive import train
    from jointspace.viz.report import write_report

    data = tmp_path / "digits"
    shutil.copytree(digits_dir, data)
    shard = min((data / "train").glob("*.tar"))
    shard.write_bytes(shard.read_bytes()[: shard.stat().st_size // 2])
    run = train(tiny_cfg(f"data.path={data}", "data.max_bad_fraction=0.5", name="lossy", epochs=1),
                show_progress=False)
    err = capsys.readouterr().err
    assert err.count("/train: skipped") == 1 and "samples" in err
    lost = json.loads((run / "run.json").read_text())["skipped"]
    assert set(lost) == {"train"} and lost["train"]["n_skipped"] > 0
    assert f"skipped {lost['train']['n_skipped']} unreadable samples of train" in write_report(run).read_text()


@pytest.mark.parametrize("damage", ["flip a byte", "truncate"])
def test_a_corrupt_newest_checkpoint_is_set_aside_and_the_previous_one_used(shapes_dir, tmp_path, capsys, damage):
    """checksums.json: at resume, the newest checkpoint fails its check (one line), moves to
    .corrupt-<name>, and the run goes on from the one before it to the weights of a straight run."""
    cfg = load_config(None, model=ClassifyRunConfig, overrides=[
        f"output_dir={tmp_path}", "name=full", f"data.path={shapes_dir}", *COMMON, "data.modalities=[image, lidar]",
        "model.towers.lidar.name=range_cnn", "model.towers.lidar.params.channels=[4, 8]", "fusion.strategy=late"])
    full = train_classifier(cfg, show_progress=False)
    half = cut_copy(full, "epoch_0002", "half")
    target = half / "checkpoints" / "epoch_0002" / ("model.safetensors" if damage == "flip a byte"
                                                     else "optimizer.safetensors")
    raw = bytearray(target.read_bytes())
    if damage == "flip a byte":
        raw[len(raw) // 2] ^= 0x01
    target.write_bytes(raw if damage == "flip a byte" else raw[: len(raw) // 3])
    capsys.readouterr()
    resumed = train_classifier(cfg.model_copy(update={"name": "half"}), resume=True, show_progress=False)
    err = [line for line in capsys.readouterr().err.splitlines() if "fails its check" in line]
    assert len(err) == 1 and "epoch_0002" in err[0] and target.name in err[0]
    assert (half / "checkpoints" / ".corrupt-epoch_0002" / target.name).exists()
    assert_same_weights(full, resumed)
    assert train_steps(resumed) == list(range(1, 10))
