"""A tiny shard folder holding every registered kind, and a contrastive run trained on it."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

KINDS = {"image": "image", "text": "text", "audio": "sequence", "lidar": "range", "points": "points",
         "video": "video"}
CLASSES = ["disc", "ring", "bar"]
SPLIT_SIZES = {"train": 48, "val": 24, "test": 24}


def make_sample(rng: np.random.Generator, split: str, i: int) -> dict:
    """One sample of every kind; the LiDAR scale (and so its largest range) differs from sample to sample."""
    label = i % len(CLASSES)
    scale = float(rng.choice([4.0, 11.0, 37.0]))
    image = np.clip(rng.normal(60 + 60 * label, 25, (12, 12, 3)), 0, 255).astype(np.uint8)
    frames = rng.normal(label, 1.0, (int(rng.integers(6, 20)), 13)).astype(np.float32)
    lidar = (scale * rng.uniform(0.2 + 0.2 * label, 1.0, (8, 16))).astype(np.float32)
    n = int(rng.integers(30, 90))
    points = rng.normal(0, 1, (n, 3)).astype(np.float32) * np.array([1 + label, 1, 1], np.float32) * scale
    video = np.clip(rng.normal(60 + 60 * label, 25, (int(rng.integers(2, 9)), 8, 8, 3)), 0, 255).astype(np.uint8)
    return {"key": f"all-{split}-{i:03d}", "image": image, "text": f"a {CLASSES[label]} sample {i % 5}",
            "audio": frames, "lidar": lidar, "points": points, "video": video, "label": label}


@pytest.fixture(scope="session")
def all_kinds_dir(tmp_path_factory) -> Path:
    from jointspace.data.shards import write_dataset

    root = tmp_path_factory.mktemp("kinds") / "all"
    rng = np.random.default_rng(0)
    splits = {s: [make_sample(rng, s, i) for i in range(n)] for s, n in SPLIT_SIZES.items()}
    write_dataset(root, splits, KINDS, CLASSES, {"name": "all-kinds"}, maxcount=20)
    return root


def all_kinds_overrides(data: Path, out: Path, name: str = "all") -> list[str]:
    return [
        f"name={name}", f"output_dir={out}", f"data.path={data}", "data.synth=null", "tracker=none",
        f"data.modalities={list(KINDS)}", "data.image_size=12", "data.max_points=64",
        "train.epochs=1", "train.batch_size=16", "train.warmup_steps=1", "train.log_every=1", "train.device=cpu",
        "model.embed_dim=16", "loss.anchor=image", "eval.linear_probe=false",
        "model.towers.image.name=cnn", "model.towers.image.params.channels=[8, 16]",
        "model.towers.text.name=transformer", "model.towers.text.params.width=16",
        "model.towers.text.params.layers=1",
        "model.towers.audio.name=frames_cnn", "model.towers.audio.params.channels=[16, 16]",
        "model.towers.lidar.name=range_cnn", "model.towers.lidar.params.channels=[8, 16]",
        "model.towers.points.name=pointnet", "model.towers.points.params.widths=[16, 32]",
        "model.towers.video.name=video_cnn", "model.towers.video.params.channels=[8, 8]", "data.video_frames=4",
    ]


@pytest.fixture(scope="session")
def all_kinds_run(tmp_path_factory, all_kinds_dir) -> Path:
    from jointspace.config import load_config
    from jointspace.tasks.contrastive import train

    out = tmp_path_factory.mktemp("kinds-runs")
    return train(load_config(None, all_kinds_overrides(all_kinds_dir, out)), show_progress=False)
