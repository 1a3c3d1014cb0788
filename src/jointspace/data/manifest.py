"""Pack user data (CSV/JSONL manifests or class folders) into shards, and inspect shard folders."""

from __future__ import annotations

import csv
import json
import re
import tempfile
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from jointspace.data import shards
from jointspace.data.folders import SPLIT_ALIASES, has_modality_folders, read_modality_folders
from jointspace.data.shards import DataError, write_dataset
from jointspace.errors import UsageError
from jointspace.kinds import KINDS, BadCell, get_kind, recognise_column, with_role
from jointspace.kinds.image import IMAGE_EXTS
from jointspace.outputs import OutputError

RESERVED = ("label", "split", "key")
MAX_PROMPTS = 32  # zero-shot prompts recorded per class from its captions
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


def carve_splits(samples: list[dict], val_fraction: float, test_fraction: float, seed: int) -> dict[str, int]:
    """Move stratified shares of the train samples to val and test (seeded), each only when the source has
    none of that split; returns how many moved to each."""
    have = {s["split"] for s in samples}
    shares = [0.0 if "val" in have else val_fraction, 0.0 if "test" in have else test_fraction]
    train = [s for s in samples if s["split"] == "train"]
    moved = {"val": 0, "test": 0}
    if not any(shares) or not train:
        return moved
    for s, split in zip(train, stratified_splits([s["label"] for s in train], (1 - sum(shares), *shares), seed)):
        if split != "train":
            s["split"], moved[split] = split, moved[split] + 1
    return moved


def assign_splits(good: list[dict], use_split: bool, split_fractions: Sequence[float], val_fraction: float,
                  test_fraction: float, seed: int) -> dict:
    """Each sample's split: the source's, else stratified by `split_fractions` (val / test shares replaced
    by the fractions given); missing val / test carved from train. Returns what dataset.json records."""
    for flag, f in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0.0 <= f < 1.0:
            raise UsageError(f"{flag} must be in [0, 1), got {f}")
    if val_fraction + test_fraction >= 1.0:
        raise UsageError(f"--val-fraction {val_fraction} + --test-fraction {test_fraction} leave no train samples")
    if not use_split:
        fr = np.asarray(split_fractions, dtype=float) / max(float(np.sum(split_fractions)), 1e-12)
        if val_fraction or test_fraction:
            v, t = val_fraction or fr[1], test_fraction or fr[2]
            fr = np.array([max(1.0 - v - t, 0.0), v, t])
        for s, split in zip(good, stratified_splits([s["label"] for s in good], fr, seed)):
            s["split"] = split
        return {"split_source": [round(float(f), 6) for f in fr]}
    moved = carve_splits(good, val_fraction, test_fraction, seed)
    out: dict = {"split_source": "column"}
    for split, fraction in (("val", val_fraction), ("test", test_fraction)):
        if moved[split]:
            out[f"{split}_carved_from_train"] = {"fraction": fraction, "n_samples": moved[split]}
    return out


def caption_prompts(samples: list[dict], modality: str, class_names: list[str]) -> dict[str, list[str]]:
    """Each class's distinct captions, the most frequent first (ties: first seen), at most MAX_PROMPTS:
    from the train split, or every split for a class that train lacks."""
    out = {}
    for label, name in enumerate(class_names):
        own = [s for s in samples if s["label"] == label]
        train = [s for s in own if s["split"] == "train"] or own
        counts = Counter(str(s[modality]).strip() for s in train if str(s[modality]).strip())
        out[name] = [c for c, _ in counts.most_common(MAX_PROMPTS)]
    return out


def pack_records(records: list[tuple[str, dict]], base: Path, out_dir: Path, modalities: dict[str, str],
                 label_map: dict[str, str] | None, split_fractions: Sequence[float], seed: int,
                 maxcount: int, max_bad_fraction: float, extra: dict, val_fraction: float = 0.0,
                 overwrite: bool = False, test_fraction: float = 0.0) -> dict:
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
    extra = {**extra, **assign_splits(good, use_split, split_fractions, val_fraction, test_fraction, seed)}
    captions = with_role(modalities, "captions")
    if captions:  # zero-shot prompts in the data's own words (eval says it used them: "captions")
        extra.update(zero_shot_prompts=caption_prompts(good, captions, class_names), zero_shot_prompts_from="captions")
    by_split = {sp: [s for s in good if s["split"] == sp] for sp in shards.SPLITS}
    extra = {**extra, "seed": seed, "label_map": label_map, "skipped": len(bad), "skipped_rows": bad[:20]}
    return write_dataset(out_dir, {sp: v for sp, v in by_split.items() if v}, modalities, class_names, extra,
                         maxcount=maxcount, overwrite=overwrite, sources=[extra["source"]])


def pack_manifest(manifest: Path, out_dir: Path, modalities: dict[str, str] | None = None,
                  label_map: dict[str, str] | None = None, split_fractions: Sequence[float] = (0.8, 0.1, 0.1),
                  seed: int = 0, maxcount: int = 1000, max_bad_fraction: float = 0.01,
                  val_fraction: float = 0.0, overwrite: bool = False, test_fraction: float = 0.0) -> dict:
    """Pack a CSV/TSV/JSONL manifest into shards (file paths relative to the manifest's folder); returns
    dataset.json content plus `skipped`. `val_fraction` / `test_fraction`: stratified splits of those
    shares when the source has none (carved from train when it has a split column)."""
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
                        maxcount, max_bad_fraction, extra, val_fraction, overwrite, test_fraction)


def pack_folder(root: Path, out_dir: Path, label_map: dict[str, str] | None = None,
                split_fractions: Sequence[float] = (0.8, 0.1, 0.1), seed: int = 0, maxcount: int = 1000,
                max_bad_fraction: float = 0.01, val_fraction: float = 0.0, overwrite: bool = False,
                test_fraction: float = 0.0, allow_missing: bool = False, points_from: str | None = None) -> dict:
    """Pack class folders: `root/<class>/*.png|jpg` with optional `.txt` captions, or one subfolder per
    modality, `root/<class>/<modality>/<stem>.<ext>` paired by stem (data/folders.py: `allow_missing`,
    `points_from`); either under `root/<split>/` too. `val_fraction` / `test_fraction`: stratified splits
    of those shares when the folders have none."""
    root, out_dir = Path(root), Path(out_dir)
    by_modality = has_modality_folders(root)
    if not by_modality and (allow_missing or points_from):
        raise UsageError(f"{root}: --allow-missing and --points-from read class folders with one subfolder per "
                         "modality (<class>/<modality>/<stem>.<ext>); these class folders hold files")
    records = [] if by_modality else folder_records(root)
    shards.SHARD_FOLDER.check(out_dir, overwrite, [root])
    if out_dir.resolve().is_relative_to(root.resolve()):  # it would be read as a class folder next time
        raise OutputError(f"{out_dir}: inside the class folders of {root}; write the shards elsewhere")
    extra = {"name": root.name, "source": str(root)}
    args = (label_map, split_fractions, seed, maxcount, max_bad_fraction)
    if not by_modality:
        return pack_records(records, root.resolve(), out_dir, {"image": "image", "text": "text"}, *args, extra,
                            val_fraction, overwrite, test_fraction)
    with tempfile.TemporaryDirectory(prefix="jointspace-points-") as scratch:  # --points-from's clouds
        found = read_modality_folders(root, allow_missing, points_from, Path(scratch))
        return pack_records(found.records, root.resolve(), out_dir, found.modalities, *args,
                            {**extra, **found.info(root)}, val_fraction, overwrite, test_fraction)
