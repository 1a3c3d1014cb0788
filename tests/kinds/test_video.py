"""The video kind end to end: the built-in `moving` clips, train (video + text), eval, index and search."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
import yaml
from typer.testing import CliRunner

from jointspace.cli import app
from jointspace.kinds import Prep, get_kind

runner = CliRunner()


def test_clips_of_any_length_become_a_fixed_number_of_frames():
    kind, rng = get_kind("video"), np.random.default_rng(0)
    short, long = rng.integers(0, 255, (3, 10, 10, 3), np.uint8), rng.integers(0, 255, (40, 6, 6), np.uint8)
    ext, data = kind.encode(short)
    assert ext == "npz" and kind.encode(short)[1] == data and np.array_equal(kind.decode(ext, data), short)
    x = kind.to_tensors("clip", [short, long], Prep(image_size=8, video_frames=5))["clip"]
    assert x.shape == (2, 5, 3, 8, 8) and x.dtype == torch.uint8  # uint8 until on_device
    assert kind.on_device(x).min() >= -1 and kind.on_device(x).max() <= 1


def test_moving_squares_train_eval_index_and_search(tmp_path):
    data, out = tmp_path / "moving", tmp_path / "runs"
    r = runner.invoke(app, ["data", "synth", "moving", "--out", str(data), "--n", "64"])
    assert r.exit_code == 0, r.output
    cfg = tmp_path / "video.yaml"
    cfg.write_text(yaml.safe_dump({
        "name": "video", "output_dir": str(out), "tracker": "none",
        "data": {"path": str(data), "modalities": ["video", "text"], "image_size": 12, "video_frames": 4},
        "model": {"embed_dim": 8, "towers": {
            "video": {"name": "video_cnn", "params": {"channels": [8, 8]}},
            "text": {"name": "transformer", "params": {"width": 16, "layers": 1}}}},
        "loss": {"anchor": "video"}, "eval": {"linear_probe": False},
        "train": {"epochs": 2, "batch_size": 16, "warmup_steps": 1, "log_every": 1, "device": "cpu"}}))
    r = runner.invoke(app, ["train", str(cfg)])
    assert r.exit_code == 0, r.output
    run = out / "video"
    prep = json.loads((run / "run.json").read_text())["prep"]
    assert prep["video_frames"] == 4 and prep["image_size"] == 12 and prep["channels"]["video"] == 3
    r = runner.invoke(app, ["eval", str(run)])
    assert r.exit_code == 0, r.output
    ev = json.loads((run / "eval.json").read_text())
    assert "video->text" in ev["retrieval"] and "video" in ev["zero_shot"]
    r = runner.invoke(app, ["index", "build", str(run), str(data), "--out", str(tmp_path / "idx"), "--split", "test"])
    assert r.exit_code == 0, r.output
    r = runner.invoke(app, ["search", str(tmp_path / "idx"), "--text", "a red square moving left", "--json",
                            "--where", "modality=video", "--k", "3"])
    assert r.exit_code == 0, r.output
    hits = json.loads(r.output)
    assert len(hits) == 3 and all(h["key"].startswith("moving-test-") for h in hits)


def test_a_bad_clip_query_is_one_line_naming_it(tmp_path):
    from jointspace.kinds import QueryError

    path = tmp_path / "q.npy"
    np.save(path, np.zeros((4, 4), np.float32))
    with pytest.raises(QueryError, match="q.npy: expected uint8 frames"):
        get_kind("video").read_query(path, Prep(), "video", str(path))
