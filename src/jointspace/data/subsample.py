"""A copy of a shard folder with some classes thinned out in one split (class-imbalance experiments)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from jointspace.data.shards import (
    SHARD_FOLDER,
    DataError,
    ReadStats,
    iter_samples,
    read_info,
    split_urls,
    write_dataset,
)
from jointspace.errors import UsageError


def parse_keep(items: list[str]) -> dict[str, float]:
    """["three=0.05", ...] -> {"three": 0.05}; fractions in (0, 1]."""
    out = {}
    for item in items:
        name, sep, frac = item.partition("=")
        try:
            value = float(frac)
        except ValueError:
            value = -1.0
        if not sep or not name or not 0.0 < value <= 1.0:
            raise UsageError(f"--keep {item!r}: expected CLASS=FRACTION with 0 < FRACTION <= 1")
        out[name] = value
    return out


def subsample_classes(root: str | Path, out: str | Path, keep: dict[str, float], split: str = "train",
                      seed: int = 0, maxcount: int = 1000, overwrite: bool = False) -> dict:
    """Write `out` as `root` with class c of `split` kept at fraction keep[c] (at least one sample, chosen by
    seed); other splits and classes are copied unchanged. Returns the new dataset.json content. `out` may
    replace a shard folder only with `overwrite`, and never `root` or a folder holding it."""
    info = read_info(root)
    SHARD_FOLDER.check(out, overwrite, [root])
    names = list(info.get("class_names", []))
    unknown = [c for c in keep if c not in names]
    if unknown:
        raise DataError(f"{root}: classes {unknown} not in the dataset (has: {', '.join(names)})")
    if split not in info.get("splits", {}):
        raise DataError(f"{root}: no split {split!r} (has: {', '.join(info.get('splits', {}))})")
    modalities = info["modalities"]
    splits = {}
    for s in info["splits"]:
        samples = list(iter_samples(split_urls(root, s), ReadStats(), list(modalities)))
        if s == split:
            rng = np.random.default_rng(seed)
            drop = set()
            for c, frac in keep.items():
                idx = [i for i, x in enumerate(samples) if x["label"] == names.index(c)]
                n_keep = max(1, round(len(idx) * frac)) if idx else 0
                drop |= set(rng.permutation(idx)[n_keep:].tolist())
            samples = [x for i, x in enumerate(samples) if i not in drop]
        splits[s] = samples
    extra = {k: v for k, v in info.items() if k not in ("modalities", "class_names", "splits")}
    extra["subsampled"] = {"from": str(root), "split": split, "keep": keep, "seed": seed}
    return write_dataset(out, splits, modalities, names, extra, maxcount=maxcount, overwrite=overwrite, sources=[root])


def clean_copy(root: str | Path, out: str | Path, drop: set[tuple[str, str]],
               relabel: dict[tuple[str, str], str] | None = None, maxcount: int = 1000,
               overwrite: bool = False) -> dict:
    """Write `out` as `root` without the samples `drop` ({(split, key)}) and with the samples of `relabel`
    ({(split, key): class name}) given that class. Returns the new dataset.json content, with how many
    were dropped and relabelled."""
    info = read_info(root)
    SHARD_FOLDER.check(out, overwrite, [root])
    names, relabel = list(info.get("class_names", [])), relabel or {}
    unknown = sorted({c for c in relabel.values() if c not in names})
    if unknown:
        raise DataError(f"{root}: suggested classes {unknown} not in the dataset (has: {', '.join(names)})")
    modalities, splits, dropped, moved = info["modalities"], {}, 0, 0
    for s in info["splits"]:
        kept = []
        for x in iter_samples(split_urls(root, s), ReadStats(), list(modalities)):
            if (s, x["key"]) in drop:
                dropped += 1
                continue
            if (s, x["key"]) in relabel:
                x, moved = {**x, "label": names.index(relabel[(s, x["key"])])}, moved + 1
            kept.append(x)
        splits[s] = kept
    extra = {k: v for k, v in info.items() if k not in ("modalities", "class_names", "splits")}
    extra["cleaned"] = {"from": str(root), "dropped": dropped, "relabelled": moved}
    return write_dataset(out, splits, modalities, names, extra, maxcount=maxcount, overwrite=overwrite, sources=[root])
