"""Embedded datasets, generated offline: `digits` (real), `shapes` (procedural RGB + LiDAR range image
and point cloud + caption) and `moving` (procedural video clips + caption)."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import numpy as np

from jointspace.data.shards import write_dataset
from jointspace.errors import UsageError

BUILTIN = ("digits", "shapes", "moving")
DEFAULT_SIZE = {"digits": None, "shapes": 3000, "moving": 1200}  # None: the whole set


def synth_size(name: str, n: int | None) -> int | None:
    """The number of samples `synthesize(name, n=n)` is asked for, defaults resolved."""
    return n if n is not None else DEFAULT_SIZE.get(name)
SHAPES_SPLIT = {"train": 0.7, "val": 0.15, "test": 0.15}


def _shapes_splits(n: int, seed: int) -> dict[str, Iterator[dict]]:
    from jointspace.data.builtin import shapes

    def samples(split: str, count: int, split_seed: int) -> Iterator[dict]:
        for i, scene in enumerate(shapes.generate(count, split_seed)):
            yield {"key": f"shapes-{split}-{i:05d}", "image": scene["image"], "lidar": scene["lidar"], "points": scene["points"],
                   "text": scene["caption"], "label": scene["label"], "meta": scene["meta"]}

    out = {}
    for j, (split, frac) in enumerate(SHAPES_SPLIT.items()):
        split_seed = int(np.random.SeedSequence([seed, j]).generate_state(1)[0])
        out[split] = samples(split, round(n * frac), split_seed)
    return out


def synthesize(name: str, out_dir: str | Path, seed: int = 0, n: int | None = None, maxcount: int = 1000,
               overwrite: bool = False) -> dict:
    """Generate a built-in dataset as shards under `out_dir`; returns its dataset.json content, which
    records what was asked (`synth`: name, seed, n). An existing shard folder is replaced only with
    `overwrite`; any other folder never."""
    asked = {"synth": {"name": name, "seed": seed, "n": synth_size(name, n)}}
    if name == "digits":
        from jointspace.data.builtin import digits

        limit = None if n is None else max(1, n // 3)
        return write_dataset(out_dir, digits.generate(seed, limit), digits.MODALITIES, digits.CLASS_NAMES,
                             {**digits.info(), "seed": seed, **asked}, maxcount=maxcount, overwrite=overwrite)
    if name == "shapes":
        from jointspace.data.builtin import shapes

        classes = shapes.class_names()
        extra = {
            "name": "shapes", "source": "procedural scenes (jointspace.data.builtin.shapes)", "seed": seed,
            "prompt_templates": shapes.prompt_templates(),
            "zero_shot_prompts": {c: shapes.zero_shot_prompts(c) for c in classes},
            "max_range": shapes.MAX_RANGE,  # metres: the range image's no-hit value, and the points' reach
            **asked,
        }
        return write_dataset(out_dir, _shapes_splits(synth_size(name, n), seed),
                             {"image": "image", "lidar": "range", "points": "points", "text": "text"}, classes, extra,
                             maxcount=maxcount, overwrite=overwrite)
    if name == "moving":
        from jointspace.data.builtin import moving

        return write_dataset(out_dir, moving.splits(synth_size(name, n), seed), moving.MODALITIES, moving.CLASS_NAMES,
                             {**moving.info(), "seed": seed, **asked}, maxcount=maxcount, overwrite=overwrite)
    raise UsageError(f"unknown built-in dataset {name!r}; choose from {', '.join(BUILTIN)}")
