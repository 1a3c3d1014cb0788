"""Pack user data (CSV/JSONL manifests or class folders) into shards, and inspect shard folders."""

from __future__ import annotations

import csv
import json
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jointspace.data import shards
from jointspace.data.shards import DataError, write_dataset
from jointspace.errors import UsageError
from jointspace.kinds import KINDS, BadCell, get_kind, recognise_column
from jointspace.kinds.image import IMAGE_EXTS
from jointspace.outputs import OutputError

RESERVED = ("label", "split", "key")
SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}
_Bad = BadCell  # one unusable row: "column: reason"


# ---- reading manifests and folders into records (where, {column: value}) ----

def read_manifest(path: Path) -> list[tuple[str, dict]]:
    """Rows of a CSV/TSV or JSONL manifest as ("row N (line L)", {column: value})."""
    if not path.is_file():
        raise DataError(f"{path}: manifest not found")
    suffix = path.suffix.lower()
    rows: list[tuple[str, dict]] = []
    with path.open(newline="", encoding="utf-8-sig") as f:
        if suffix in (".csv", ".tsv"):
            reader = csv.DictReader(f, delimiter="\t" if suffix == ".tsv" else ",")
            for rec in reader:
                clean = {k.strip(): v.strip() if isinstance(v, str) else v for k, v in rec.items() if k}
                rows.append((f"row {len(rows) + 1} (line {reader.line_num})", clean))
        elif suffix in (".jsonl", ".ndjson"):
            for line_no, line in enumerate(f, 1):
                if line.strip():
                    try:
                        rec = json.loads(line)
                    except json.JSONDecodeError as err:
                        rec = {"__error__": f"invalid JSON ({err})"}
                    rec = rec if isinstance(rec, dict) else {"__error__": "not a JSON object"}
                    rows.append((f"row {len(rows) + 1} (line {line_no})", rec))
        else:
            raise DataError(f"{path}: unknown manifest type {suffix!r} (use .csv, .tsv or .jsonl)")
    return rows


def infer_modalities(records: list[tuple[str, dict]]) -> dict[str, str]:
    """Guess modality columns: each kind recognises its columns by name or values (.npy columns named
    lidar/depth/range -> range, points/cloud -> points, others -> sequence)."""
    out: dict[str, str] = {}
    for col in dict.fromkeys(k for _, rec in records for k in rec):
        if col in RESERVED or col.startswith("__"):
            continue
        vals = [v.lower() for _, rec in records if isinstance(v := rec.get(col), str) and v.strip()]
        kind = recognise_column(col, vals)
        if kind is not None:
            out[col] = kind
    return out


def folder_records(root: Path) -> list[tuple[str, dict]]:
    """Records for `root/<class>/*.png|jpg` or `root/<split>/<class>/...`; captions from sibling `.txt`."""
    if not root.is_dir():
        raise DataError(f"{root}: not a folder")
    subdirs = sorted(p for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    presplit = bool(subdirs) and all(p.name.lower() in SPLIT_ALIASES for p in subdirs)
    layouts = [(SPLIT_ALIASES[p.name.lower()], p) for p in subdirs] if presplit else [(None, root)]
    records: list[tuple[str, dict]] = []
    for split, folder in layouts:
        for cls in sorted(d for d in folder.iterdir() if d.is_dir() and not d.name.startswith(".")):
            for img in sorted(f for f in cls.iterdir() if f.suffix.lower() in IMAGE_EXTS):
                cap = img.with_suffix(".txt")
                text = cap.read_text(encoding="utf-8", errors="replace").strip() if cap.is_file() else ""
                rel = img.relative_to(root).as_posix()  # paths resolve against root, wherever we run from
                rec = {"image": rel, "text": text or f"a photo of a {cls.name.replace('_', ' ')}",
                       "label": cls.name, "file": rel}
                records.append((f"row {len(records) + 1}", {**rec, "split": split} if split else rec))
    if not records:
        raise DataError(f"{root}: no images in class folders (expected root/<class>/*.png|jpg "
                        "or root/train/<class>/...)")
    return records


# ---- checking values ----

def check_value(kind: str, value: Any, base: Path, column: str) -> tuple[Any, Any]:
    """Validate one cell by its kind; returns (value to write, shape signature) or raises _Bad naming the reason."""
    if value is None or (isinstance(value, str) and not value.strip()):
        raise _Bad(f"{column}: empty value")
    return get_kind(kind).check_cell(value, base, column)


def _sort_key(name: str) -> tuple:
    return (0, int(name), "") if re.fullmatch(r"-?\d+", name) else (1, 0, name)


def stratified_splits(labels: Sequence[int], fractions: Sequence[float], seed: int) -> list[str]:
    """Seeded per-class split assignment (train/val/test) by fractions."""
    frac = np.asarray(fractions, dtype=float)
    if frac.shape != (3,) or (frac < 0).any() or frac.sum() <= 0:
        raise UsageError(f"split_fractions must be three non-negative numbers (train, val, test), got {fractions}")
    bounds = np.cumsum(frac / frac.sum())
    rng, arr = np.random.default_rng(seed), np.asarray(labels)
    out = [""] * len(arr)
    for c in np.unique(arr):  # a random offset per class spreads rounding remainders evenly over splits
        idx = rng.permutation(np.flatnonzero(arr == c))
        where = np.searchsorted(bounds, (np.arange(len(idx)) + rng.random()) / len(idx), side="right")
        for i, w in zip(idx, where):
            out[i] = shards.SPLITS[min(int(w), 2)]
    return out


# ---- packing ----

def _check_row(n: int, rec: dict, base: Path, modalities: dict[str, str], use_split: bool, seen: dict,
               keys: set[str]) -> dict:
    """One record as a sample {key, <modality>: value, name, split, meta}; raises _Bad."""
    if "__error__" in rec:
        raise _Bad(f"json: {rec['__error__']}")
    values, sigs = {}, {}
    for name, kind in modalities.items():
        values[name], sigs[name] = check_value(kind, rec.get(name), base, name)
        if sigs[name] is not None and seen.get(name, sigs[name]) != sigs[name]:
            raise _Bad(f"{name}: shape {sigs[name]} differs from earlier rows' {seen[name]}")
    label = str(rec["label"] if rec.get("label") is not None else "").strip()
    if not label:
        raise _Bad("label: empty label")
    split = SPLIT_ALIASES.get(str(rec.get("split") or "").strip().lower()) if use_split else None
    if use_split and split is None:
        raise _Bad(f"split: unknown split {rec.get('split')!r} (use train/val/test in every row)")
    raw_key = str(rec["key"]) if rec.get("key") not in (None, "") else f"{n:06d}"
    key = re.sub(r"[^A-Za-z0-9_-]", "_", raw_key)
    if key in keys:
        raise _Bad(f"key: duplicate key {raw_key!r}")
    keys.add(key)
    seen.update({k: v for k, v in sigs.items() if v is not None})
    meta = {k: v for k, v in rec.items() if k not in modalities and k not in RESERVED}
    meta.update({"key": raw_key} if raw_key != key else {})
    return {"key": key, **values, "name": label, "split": split, "meta": meta}


def carve_val(samples: list[dict], val_fraction: float, seed: int) -> int:
    """Move a stratified `val_fraction` of the train samples to val (seeded); returns how many moved."""
    train = [s for s in samples if s["split"] == "train"]
    moved = 0
    for s, split in zip(train, stratified_splits([s["label"] for s in train], (1 - val_fraction, val_fraction, 0),
                                                 seed)):
        if split == "val":
            s["split"], moved = "val", moved + 1
    return moved


def pack_records(records: list[tuple[str, dict]], base: Path, out_dir: Path, modalities: dict[str, str],
                 label_map: dict[str, str] | None, split_fractions: Sequence[float], seed: int,
                 maxcount: int, max_bad_fraction: float, extra: dict, val_fraction: float = 0.0,
                 overwrite: bool = False) -> dict:
    """Check every record, split the good ones and write shards; bad rows are skipped and counted. An
    existing shard folder at `out_dir` is replaced only with `overwrite`; the source (`extra['source']`)
    and any other folder never."""
    if not records:
        raise DataError(f"{extra['source']}: no rows")
    unknown = {m: k for m, k in modalities.items() if k not in KINDS}
    if unknown:
        raise DataError(f"unknown modality kinds {unknown} (known: {', '.join(KINDS)})")
    label_map = {str(k): str(v) for k, v in (label_map or {}).items()}
    use_split = any(rec.get("split") not in (None, "") for _, rec in records)
    good: list[dict] = []
    bad: list[str] = []
    sigs: dict[str, Any] = {}
    keys: set[str] = set()
    for n, (where, rec) in enumerate(records, 1):
        try:
            sample = _check_row(n, rec, base, modalities, use_split, sigs, keys)
        except _Bad as err:
            bad.append(f"{where}: {err}")
            continue
        sample["name"] = label_map.get(sample["name"], sample["name"])
        good.append(sample)
    if len(bad) / len(records) > max_bad_fraction or not good:
        limit = f" > max_bad_fraction {max_bad_fraction:.1%}" if good else ""
        raise DataError(f"{extra['source']}: {len(bad)} of {len(records)} rows unusable "
                        f"({len(bad) / len(records):.1%}{limit}); first bad rows:\n  " + "\n  ".join(bad[:5]))
    class_names = sorted({s["name"] for s in good}, key=_sort_key)
    index = {c: i for i, c in enumerate(class_names)}
    for s in good:
        s["label"] = index[s.pop("name")]
    if not use_split:
        for s, split in zip(good, stratified_splits([s["label"] for s in good], split_fractions, seed)):
            s["split"] = split
    if not 0.0 <= val_fraction < 1.0:
        raise UsageError(f"--val-fraction must be in [0, 1), got {val_fraction}")
    carved = carve_val(good, val_fraction, seed) if val_fraction and not any(s["split"] == "val" for s in good) else 0
    extra = {**extra, **({"val_carved_from_train": {"fraction": val_fraction, "n_samples": carved}} if carved else {})}
    by_split = {sp: [s for s in good if s["split"] == sp] for sp in shards.SPLITS}
    extra = {**extra, "seed": seed, "label_map": label_map, "skipped": len(bad), "skipped_rows": bad[:20],
             "split_source": "column" if use_split else list(split_fractions)}
    return write_dataset(out_dir, {sp: v for sp, v in by_split.items() if v}, modalities, class_names, extra,
                         maxcount=maxcount, overwrite=overwrite, sources=[extra["source"]])


def pack_manifest(manifest: Path, out_dir: Path, modalities: dict[str, str] | None = None,
                  label_map: dict[str, str] | None = None, split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0, maxcount: int = 1000, max_bad_fraction: float = 0.01,
                  val_fraction: float = 0.0, overwrite: bool = False) -> dict:
    """Pack a CSV/TSV/JSONL manifest into shards (file paths relative to the manifest's folder); returns
    dataset.json content plus `skipped`. `val_fraction`: a stratified val split carved from train when
    the source has none."""
    manifest, out_dir = Path(manifest), Path(out_dir)
    records = read_manifest(manifest)
    if not records:
        raise DataError(f"{manifest}: no rows")
    columns = list(dict.fromkeys(k for _, rec in records for k in rec if not k.startswith("__")))
    if "label" not in columns:
        raise DataError(f"{manifest}: no 'label' column (columns: {', '.join(columns) or 'none'})")
    modalities = dict(modalities) if modalities else infer_modalities(records)
    missing = [m for m in modalities if m not in columns]
    if missing or not modalities:
        raise DataError(f"{manifest}: modality columns {missing or 'none found'} (columns: {', '.join(columns)}); "
                        "name them image/text or pass modalities={column: kind}")
    shards.SHARD_FOLDER.check(out_dir, overwrite, [manifest])
    extra = {"name": manifest.stem, "source": str(manifest)}
    return pack_records(records, manifest.resolve().parent, out_dir, modalities, label_map, split_fractions, seed,
                        maxcount, max_bad_fraction, extra, val_fraction, overwrite)


def pack_folder(root: Path, out_dir: Path, label_map: dict[str, str] | None = None,
                split_fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, maxcount: int = 1000,
                max_bad_fraction: float = 0.01, val_fraction: float = 0.0, overwrite: bool = False) -> dict:
    """Pack `root/<class>/*.png|jpg` (or `root/<split>/<class>/...`) with optional `.txt` captions;
    `val_fraction`: a stratified val split carved from train when the folders have none."""
    root, out_dir = Path(root), Path(out_dir)
    records = folder_records(root)
    shards.SHARD_FOLDER.check(out_dir, overwrite, [root])
    if out_dir.resolve().is_relative_to(root.resolve()):  # it would be read as a class folder next time
        raise OutputError(f"{out_dir}: inside the class folders of {root}; write the shards elsewhere")
    extra = {"name": root.name, "source": str(root)}
    return pack_records(records, root.resolve(), out_dir, {"image": "image", "text": "text"}, label_map,
                        split_fractions, seed, maxcount, max_bad_fraction, extra, val_fraction, overwrite)
