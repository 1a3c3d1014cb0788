"""Inspect shard folders: counts per class and split, modality shapes, corrupt samples; sample grids."""

from __future__ import annotations

from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
from rich.markup import escape
from rich.table import Table

from jointspace.config import DataConfig
from jointspace.data.shards import DataError, ReadStats
from jointspace.data.source import Source
from jointspace.data.sources import shards_arg
from jointspace.kinds import with_role

# ---- inspecting ----

def _describe(kind: str, value: Any) -> dict:
    if value is None:
        return {"kind": kind, "shape": None, "dtype": None}
    if isinstance(value, str):
        return {"kind": kind, "shape": "text", "dtype": "str"}
    return {"kind": kind, "shape": list(np.shape(value)), "dtype": str(np.asarray(value).dtype)}


def inspect_shards(root: Path | str | Source) -> dict:
    """Per split: sample and class counts, modality shapes (first sample) and unreadable samples. `root`: a
    shard folder, or foreign WebDataset shard URLs (read with open_clip's default keys)."""
    root = root if isinstance(root, Source) else shards_arg(root, DataConfig(urls="-"))
    info = root.info
    labelled = info.get("labelled", True)
    kinds, names = info.get("modalities", {}), [str(c) for c in info.get("class_names", [])]
    result = {}
    for split, meta in info.get("splits", {}).items():
        stats = ReadStats(n_expected=meta.get("n_samples"))
        counts: Counter = Counter()
        first: dict = {}
        try:
            urls = root.urls(split)
        except DataError as err:
            urls = []
            stats.record(str(err))
        for sample in root.samples(urls, stats, list(kinds)) if urls else ():
            counts[sample["label"] if labelled else -1] += 1
            first = first or sample
        labels = list(range(len(names))) + sorted(c for c in counts if not 0 <= c < len(names))
        names_of = {-1: "(no labels)"} if not labelled else {}
        result[split] = {"n_samples": stats.n_ok, "bad": stats.n_missing, "errors": stats.errors[:10],
                         "class_counts": {names_of.get(c) or (names[c] if 0 <= c < len(names) else str(c)): counts[c]
                                          for c in labels},
                         "modalities": {m: _describe(k, first.get(m)) for m, k in kinds.items()}}
    return result


def format_inspection(result: dict, max_classes: int = 60) -> Table:
    """A rich table: counts per class and split, totals, unreadable samples and modality shapes."""
    splits = list(result)
    classes = list(dict.fromkeys(c for r in result.values() for c in r["class_counts"]))
    table = Table(title="shard folder", title_justify="left")
    table.add_column("class / modality")
    for split in splits:
        table.add_column(split, justify="right")
    for c in classes[:max_classes]:
        table.add_row(escape(c), *[str(result[s]["class_counts"].get(c, 0)) for s in splits])
    if len(classes) > max_classes:
        rest = classes[max_classes:]
        table.add_row(f"... {len(rest)} more classes",
                      *[str(sum(result[s]["class_counts"].get(c, 0) for c in rest)) for s in splits])
    if table.rows:
        table.rows[-1].end_section = True
    table.add_row("[bold]samples[/]", *[f"[bold]{result[s]['n_samples']}[/]" for s in splits])
    table.add_row("unreadable", *[f"[red]{result[s]['bad']}[/]" if result[s]["bad"] else "0" for s in splits],
                  end_section=True)
    mods = dict.fromkeys(m for r in result.values() for m in r["modalities"])
    for m in mods:
        descs = [result[s]["modalities"].get(m) or {} for s in splits]
        kind = next((d["kind"] for d in descs if d.get("kind")), "?")
        table.add_row(escape(f"{m} ({kind})"), *[_shape_text(d) for d in descs])
    errors = [f"{s}: {e}" for s in splits for e in result[s]["errors"]]
    if errors:
        table.caption = escape("unreadable:\n" + "\n".join(errors[:10]))
        table.caption_justify = "left"
    return table


def _shape_text(desc: dict) -> str:
    if not desc or desc.get("shape") is None:
        return "-"
    return "text" if desc["shape"] == "text" else f"{tuple(desc['shape'])} {desc['dtype']}"


# ---- plots ----

def class_grid(root: Path, split: str, out_png: Path, per_class: int = 8, max_classes: int = 20) -> Path:
    """A PNG grid of up to `per_class` images for each class (rows) of one split."""
    from matplotlib.figure import Figure

    root = root if isinstance(root, Source) else shards_arg(root, DataConfig(urls="-"))
    info = root.info
    image = with_role(info.get("modalities", {}), "picture")
    if image is None:
        raise DataError(f"{root}: no image modality to show (has: {', '.join(info.get('modalities', {}))})")
    names = [str(c) for c in info.get("class_names", [])]
    want = min(len(names), max_classes) if names else max_classes
    picked: dict[int, list] = {}
    for sample in root.samples(root.urls(split), ReadStats(), [image]):
        row = picked.setdefault(sample["label"], [])
        if len(row) < per_class:
            row.append(sample[image])
        if len(picked) >= want and all(len(v) >= per_class for v in picked.values()):
            break
    if not picked:
        raise DataError(f"{root}/{split}: no readable images")
    labels = sorted(picked)[:max_classes]
    fig = Figure(figsize=(per_class * 1.1 + 1.5, len(labels) * 1.1))
    axes = fig.subplots(len(labels), per_class, squeeze=False)
    for r, label in enumerate(labels):
        for c, ax in enumerate(axes[r]):
            ax.set_axis_off()
            if c < len(picked[label]):
                img = picked[label][c]
                ax.imshow(img, cmap="gray" if img.ndim == 2 else None, interpolation="nearest")
        name = names[label] if 0 <= label < len(names) else str(label)
        axes[r][0].text(-0.1, 0.5, name, transform=axes[r][0].transAxes, ha="right", va="center", fontsize=9)
    return _save(fig, out_png)


def plot_class_balance(result: dict, out_png: Path) -> Path:
    """Bar chart of samples per class, one bar colour per split."""
    from matplotlib.figure import Figure

    classes = list(dict.fromkeys(c for r in result.values() for c in r["class_counts"]))
    x, width = np.arange(len(classes)), 0.8 / max(len(result), 1)
    fig = Figure(figsize=(min(max(4.0, 0.35 * len(classes) * max(len(result), 1) + 2), 24), 4))
    ax = fig.subplots()
    for i, (split, r) in enumerate(result.items()):
        ax.bar(x + (i - (len(result) - 1) / 2) * width, [r["class_counts"].get(c, 0) for c in classes], width,
               label=f"{split} ({r['n_samples']})")
    ax.set_xticks(x, classes, rotation=60 if len(classes) > 8 else 0, ha="right" if len(classes) > 8 else "center")
    ax.set_ylabel("samples")
    ax.set_title("class balance per split")
    ax.legend()
    return _save(fig, out_png)


def _save(fig: Any, out_png: Path) -> Path:
    out = Path(out_png)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=100, bbox_inches="tight")
    return out
