"""Every kind: the search encoder embeds a raw value exactly as `jointspace embed` does; fixed range scales."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.data.dataset import load_split
from jointspace.data.manifest import infer_modalities
from jointspace.data.shards import ReadStats, iter_samples, split_urls
from jointspace.kinds import KINDS, Prep, get_kind
from jointspace.kinds.points import points_to_tensor
from jointspace.kinds.range import range_to_tensor

from .conftest import KINDS as DATA_KINDS

runner = CliRunner()


def _raw_test_samples(root: Path) -> list[dict]:
    return list(iter_samples(split_urls(root, "test"), ReadStats()))


def _write_query(tmp: Path, kind: str, value) -> Path:
    """A query file as a user would save it: PNG for images, .npy for arrays."""
    if kind == "image":
        path = tmp / "q.png"
        buf = io.BytesIO()
        Image.fromarray(value).save(buf, format="PNG")
        path.write_bytes(buf.getvalue())
    else:
        path = tmp / "q.npy"
        np.save(path, value, allow_pickle=False)
    return path


def test_every_kind_is_covered_by_the_fixture():
    assert set(DATA_KINDS.values()) == set(KINDS)


@pytest.mark.parametrize("modality", list(DATA_KINDS))
def test_search_encoder_equals_embed(modality, all_kinds_run, all_kinds_dir, tmp_path):
    """One sample embedded through the search encoder equals its row of `jointspace embed` (atol 1e-5)."""
    from jointspace.index.query import Encoder

    out = tmp_path / "emb"
    r = runner.invoke(app, ["embed", str(all_kinds_run), str(all_kinds_dir), "--out", str(out), "--split", "test"])
    assert r.exit_code == 0, r.output
    keys = np.load(out / "keys.npy").tolist()
    table = np.load(out / f"{modality}.npy")
    enc = Encoder.from_run(all_kinds_run)
    samples = _raw_test_samples(all_kinds_dir)
    for sample in (samples[0], samples[7], samples[-1]):
        if modality == "text":
            got = enc.encode(modality, [sample[modality]])
        else:
            got = enc.encode_file(modality, _write_query(tmp_path, DATA_KINDS[modality], sample[modality]))
        np.testing.assert_allclose(got[0], table[keys.index(sample["key"])], atol=1e-5)


def test_range_scale_is_fixed_per_run(all_kinds_run, all_kinds_dir):
    """The train split's largest range is recorded and used by every split; the scans' maxima differ."""
    info = json.loads((all_kinds_run / "run.json").read_text())
    train = [s for s in iter_samples(split_urls(all_kinds_dir, "train"), ReadStats())]
    assert info["prep"]["max_range"]["lidar"] == pytest.approx(max(float(s["lidar"].max()) for s in train))
    assert info["prep"]["max_range"]["points"] == pytest.approx(
        max(float(np.linalg.norm(s["points"], axis=1).max()) for s in train), rel=1e-6)
    maxima = {round(float(s["lidar"].max())) for s in _raw_test_samples(all_kinds_dir)}
    assert len(maxima) >= 2  # scans whose largest ranges differ


def test_a_scan_gets_the_same_tensor_in_any_batch():
    rng = np.random.default_rng(0)
    near, far = rng.uniform(0, 5, (8, 16)), rng.uniform(0, 60, (8, 16))
    alone = range_to_tensor([near], 40.0)
    batched = range_to_tensor([near, far], 40.0)
    torch.testing.assert_close(alone[0], batched[0])
    assert float(alone.max()) < 1.0  # scaled by the run's 40 m, not by the scan's own 5 m
    with pytest.raises(ValueError, match="no max_range"):
        get_kind("range").to_tensors("lidar", [near], Prep())
    cloud, big = rng.normal(0, 3, (50, 3)), rng.normal(0, 30, (500, 3))
    x1, n1 = points_to_tensor([cloud], 64, 40.0)
    x2, n2 = points_to_tensor([cloud, big], 64, 40.0)
    torch.testing.assert_close(x1[0], x2[0])
    assert n1.tolist() == [50] and n2.tolist() == [50, 64]  # 500 points thinned to max_points


def test_eval_splits_use_the_runs_scale(all_kinds_run, all_kinds_dir):
    from jointspace.config import load_config
    from jointspace.runs import load_run_split, read_run_info

    cfg, info = load_config(all_kinds_run / "config.yaml"), read_run_info(all_kinds_run)
    test = load_run_split(cfg, info, all_kinds_dir, "test")
    own = load_split(all_kinds_dir, "test", ["lidar"])  # scaled by the test split's own maximum
    assert test.prep.max_range["lidar"] == info["prep"]["max_range"]["lidar"]
    assert own.prep.max_range["lidar"] != test.prep.max_range["lidar"]


def test_manifest_columns_are_recognised_by_their_kinds():
    rows = [("row 1", {"image": "a.png", "caption": "x", "audio": "a.npy", "lidar": "l.npy",
                       "scan_points": "p.npy", "label": "a"})]
    assert infer_modalities(rows) == {"image": "image", "caption": "text", "audio": "sequence",
                                      "lidar": "range", "scan_points": "points"}


def test_points_through_every_verb(all_kinds_run, all_kinds_dir, tmp_path):
    """eval, report, index build and `search --file scan.npy --modality points` on a run with points."""
    r = runner.invoke(app, ["eval", str(all_kinds_run)])
    assert r.exit_code == 0, r.output
    ev = json.loads((all_kinds_run / "eval.json").read_text())
    assert "points->image" in ev["retrieval"] and "image->points" in ev["retrieval"]
    r = runner.invoke(app, ["report", str(all_kinds_run)])
    assert r.exit_code == 0, r.output
    assert (all_kinds_run / "plots" / "retrieval_points_to_image.png").exists()
    idx = tmp_path / "idx"
    r = runner.invoke(app, ["index", "build", str(all_kinds_run), str(all_kinds_dir), "--out", str(idx),
                            "--split", "test"])
    assert r.exit_code == 0, r.output
    sample = _raw_test_samples(all_kinds_dir)[3]
    scan = _write_query(tmp_path, "points", sample["points"])
    r = runner.invoke(app, ["search", str(idx), "--file", str(scan), "--modality", "points", "--json",
                            "--where", "modality=points", "--k", "3"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert hits[0]["key"] == sample["key"] and hits[0]["score"] == pytest.approx(1.0, abs=1e-4)
    r = runner.invoke(app, ["search", str(idx), "--file", str(scan)])  # .npy: several kinds read it
    assert r.exit_code == 2 and "--modality" in r.output


@pytest.mark.parametrize("fusion", ["late", "transformer"])
def test_fusion_classifiers_take_points(fusion, all_kinds_dir, tmp_path):
    from jointspace.config import load_config
    from jointspace.tasks.classify import ClassifyRunConfig, train_classifier

    from .conftest import all_kinds_overrides

    cfg = load_config(None, model=ClassifyRunConfig, overrides=all_kinds_overrides(all_kinds_dir, tmp_path, f"fuse-{fusion}") + [
        "data.modalities=[image, points]", f"fusion.strategy={fusion}", "fusion.token_dim=16", "fusion.heads=2",
        "train.epochs=2"])
    run = train_classifier(cfg, show_progress=False)
    summary = json.loads((run / "done.json").read_text())
    assert 0.0 <= summary["test_accuracy"] <= 1.0 and (run / "classification_test.txt").exists()


def test_pointnet_pools_an_empty_cloud_to_zeros_not_inf():
    from jointspace.towers import build_tower

    tower = build_tower("pointnet", in_features=3, widths=(8,)).eval()
    x, lengths = points_to_tensor([np.zeros((0, 3), np.float32), np.ones((5, 3), np.float32)], 16, 10.0)
    out = tower(x, lengths)
    assert torch.isfinite(out).all() and lengths.tolist() == [0, 5]


def test_sources_share_one_range_scale(tmp_path):
    """Two shard folders with different largest ranges: every source is scaled by the larger."""
    from jointspace.config import DataConfig
    from jointspace.data.shards import write_dataset
    from jointspace.data.sources import load_sources

    for name, top in (("near", 5.0), ("far", 50.0)):
        samples = [{"key": f"{name}{i}", "lidar": np.full((8, 8), top * (i + 1) / 4, np.float32), "label": 0}
                   for i in range(4)]
        write_dataset(tmp_path / name, {"train": samples}, {"lidar": "range"}, ["a"])
    cfg = DataConfig(path=str(tmp_path / "near"), modalities=["lidar"],
                     sources=[{"path": str(tmp_path / "near")}, {"path": str(tmp_path / "far")}])
    data = load_sources(cfg, "train", modalities=["lidar"])
    assert data.prep.max_range == {"lidar": 50.0}
    near_top = data.inputs["lidar"][3].max()  # 5 m scaled by 50 m, not clamped at its own 5 m
    assert float(near_top) == pytest.approx(np.log1p(5.0) / np.log1p(50.0), rel=1e-6)


def test_streaming_a_range_modality_needs_a_fixed_scale(all_kinds_dir, tmp_path):
    from jointspace.config import load_config
    from jointspace.tasks.contrastive import train

    from .conftest import all_kinds_overrides

    cfg = load_config(None, all_kinds_overrides(all_kinds_dir, tmp_path, "stream") + ["data.streaming=true"])
    with pytest.raises(Exception, match="data.max_range"):
        train(cfg, show_progress=False)
    cfg = load_config(None, all_kinds_overrides(all_kinds_dir, tmp_path, "stream2") + [
        "data.streaming=true", "data.max_range=40", "data.shuffle_buffer=0"])
    run = train(cfg, show_progress=False)
    prep = json.loads((run / "run.json").read_text())["prep"]
    assert prep["max_range"] == {"lidar": 40.0, "points": 40.0} and prep["channels"]["points"] == 3
