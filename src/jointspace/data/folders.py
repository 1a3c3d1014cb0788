"""Class folders that hold one subfolder per modality, as users keep multimodal data (the CILP layout):
`ROOT/<class>/<modality>/<stem>.<ext>`, or the same under `ROOT/train|val|test/`. A class's files are
paired across its modality subfolders by stem (`rgb/0000.png` + `lidar/0000.npy` is one sample). Each
subfolder's kind is the kinds' choice (`kinds.recognise_folder`: folder words, then extensions); files
that describe a whole folder of values (`Kind.grid_files`: azimuth.npy / zenith.npy beside range images)
are read, nearest first, from the modality folder, its class folder, its split folder or ROOT."""

from __future__ import annotations

import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jointspace.data.shards import DataError
from jointspace.errors import UsageError
from jointspace.kinds import all_kinds, get_kind, kind_for_alias, recognise_folder

SPLIT_ALIASES = {"train": "train", "training": "train", "val": "val", "valid": "val", "validation": "val",
                 "dev": "val", "test": "test", "testing": "test"}
SHOWN = 5  # paths listed in one-line messages


@dataclass
class ClassFolder:
    """One class folder: its split (None: not pre-split), class name, path, {modality: {stem: file}}."""

    split: str | None
    name: str
    path: Path
    files: dict[str, dict[str, Path]] = field(default_factory=dict)


@dataclass
class FolderSet:
    """What a modality-folder tree holds: records to pack, and what was not packed (each listed)."""

    records: list[tuple[str, dict]]
    modalities: dict[str, str]
    paths: list[dict[str, Path]]  # per record: modality -> its file
    unpaired: list[str] = field(default_factory=list)  # files whose stem another modality lacks
    ignored: list[str] = field(default_factory=list)  # loose files that are neither samples nor grids
    dropped: dict[str, list[str]] = field(default_factory=dict)  # --allow-missing: modality -> class folders
    n_dropped: int = 0
    grids: dict[str, dict] = field(default_factory=dict)

    def info(self, root: Path) -> dict:
        """What dataset.json records of the folder tree."""
        out: dict = {"layout": "<class>/<modality>/<stem>", "unpaired": {"n_files": len(self.unpaired),
                                                                        "files": self.unpaired[:50]}}
        out.update({"ignored_files": self.ignored[:50]} if self.ignored else {})
        out.update({"grids": self.grids} if self.grids else {})
        if self.dropped:
            out["dropped_missing"] = {"n_samples": self.n_dropped, "modalities": self.dropped}
        return out


def _visible(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if not p.name.startswith("."))


def _rel(path: Path, root: Path) -> str:
    return path.relative_to(root).as_posix()


def class_folders(root: Path) -> list[tuple[str | None, Path]]:
    """(split, class folder) under `root` or `root/train|val|test/`."""
    subdirs = [p for p in _visible(root) if p.is_dir()]
    presplit = bool(subdirs) and all(p.name.lower() in SPLIT_ALIASES for p in subdirs)
    tops = [(SPLIT_ALIASES[p.name.lower()], p) for p in subdirs] if presplit else [(None, root)]
    return [(split, cls) for split, top in tops for cls in _visible(top) if cls.is_dir()]


def has_modality_folders(root: Path) -> bool:
    """Whether `root`'s class folders hold subfolders (one per modality) rather than files."""
    return root.is_dir() and any(p.is_dir() for _, cls in class_folders(root) for p in _visible(cls))


def modality_name(folder: str) -> str:
    """A subfolder's name as a modality name (a shard member's stem: no dots or separators)."""
    return re.sub(r"[^A-Za-z0-9_-]", "_", folder)


def _scan(root: Path, grid_names: set[str]) -> tuple[list[ClassFolder], list[str]]:
    """Every class folder's files by modality and stem; loose files (not grid files) are returned to list."""
    classes, twins = [], []
    found = class_folders(root)
    tops = sorted({root, *(path.parent for _, path in found)})  # the root and its split folders
    loose = [_rel(f, root) for top in tops for f in _visible(top) if f.is_file() and f.name not in grid_names]
    for split, path in found:
        folder = ClassFolder(split, path.name, path)
        for sub in _visible(path):
            if sub.is_file():
                loose += [] if sub.name in grid_names else [_rel(sub, root)]
                continue
            stems = folder.files.setdefault(modality_name(sub.name), {})
            for f in _visible(sub):
                if not f.is_file() or f.name in grid_names:
                    loose += [] if f.name in grid_names else [_rel(f, root) + "/"]
                elif f.stem in stems:
                    twins.append(f"{_rel(stems[f.stem], root)} + {f.name}")
                else:
                    stems[f.stem] = f
        classes.append(folder)
    if twins:
        raise DataError(f"{root}: {len(twins)} files share a stem with another file of their modality folder, "
                        f"so they cannot be paired: {'; '.join(twins[:SHOWN])}")
    return classes, loose


def _kinds(root: Path, classes: list[ClassFolder]) -> dict[str, str]:
    """Each modality subfolder name's kind, asked of the kinds (folder words, extensions)."""
    exts: dict[str, set[str]] = {}
    for folder in classes:
        for mod, stems in folder.files.items():
            exts.setdefault(mod, set()).update(p.suffix.lower().lstrip(".") for p in stems.values())
    out = {}
    for mod, found in exts.items():
        kind = recognise_folder(mod, found)
        if kind is None:
            words = "; ".join(f"{k.name}: {', '.join(k.folder_words)} (.{', .'.join(k.extensions)})"
                              for k in all_kinds())
            raise DataError(f"{root}: no kind reads the '{mod}' subfolders (files: "
                            f"{', '.join(sorted('.' + e for e in found))}); folder words and extensions: {words}")
        out[mod] = kind
    return out


def _missing(root: Path, classes: list[ClassFolder], modalities: dict[str, str],
             allow_missing: bool) -> tuple[dict[str, list[str]], int]:
    """Class folders lacking a modality subfolder: an error naming how many samples and which folders,
    unless `allow_missing` (then they are dropped, and counted)."""
    lacking: dict[str, list[str]] = {}
    n_samples = 0
    for folder in classes:
        absent = [m for m in modalities if not folder.files.get(m)]
        n = len({s for stems in folder.files.values() for s in stems})
        if absent and n:
            n_samples += n
            for m in absent:
                lacking.setdefault(m, []).append(f"{_rel(folder.path, root)}/ ({n} samples)")
    if lacking and not allow_missing:
        which = "; ".join(f"{m} missing in {len(v)} class folders: {', '.join(v[:SHOWN])}" for m, v in lacking.items())
        raise DataError(f"{root}: {n_samples} samples lack a modality ({which}); add the files, or pass "
                        "--allow-missing to keep only the samples that have every modality")
    return lacking, n_samples


def _sort_key(stem: str) -> tuple:
    return (0, int(stem), "") if stem.isdigit() else (1, 0, stem)


def _pair(root: Path, classes: list[ClassFolder], modalities: dict[str, str], out: FolderSet) -> None:
    """Records of the stems every modality has; the other files are listed as unpaired."""
    for folder in classes:
        if any(not folder.files.get(m) for m in modalities):
            continue
        every = set.intersection(*(set(folder.files[m]) for m in modalities))
        out.unpaired += [_rel(p, root) for m in modalities for s, p in folder.files[m].items() if s not in every]
        for stem in sorted(every, key=_sort_key):
            paths = {m: folder.files[m][stem] for m in modalities}
            rec = {m: get_kind(k).folder_value(paths[m], root) for m, k in modalities.items()}
            where = "/".join(filter(None, [folder.split, folder.name, stem]))
            rec.update(label=folder.name, key=where.replace("/", "_"), stem=stem)
            out.records.append((where, {**rec, "split": folder.split} if folder.split else rec))
            out.paths.append(paths)


def _nearest(name: str, folder: Path, root: Path) -> Path | None:
    """`name` in `folder` or the nearest folder above it, up to `root`."""
    for place in (folder, *folder.parents):
        if (place / name).is_file():
            return place / name
        if place == root:
            return None
    return None


def _load(path: Path, root: Path) -> np.ndarray:
    try:
        return np.load(path, allow_pickle=False)
    except Exception as err:  # noqa: BLE001 - any unreadable grid file stops the pack, naming it
        raise DataError(f"{_rel(path, root)}: unreadable ({type(err).__name__}: {err})") from None


def _readable(paths: list[Path]) -> Iterator[np.ndarray]:
    """The arrays of files that load (the others become bad rows when packed)."""
    for p in paths:
        try:
            yield np.load(p, allow_pickle=False)
        except Exception:  # noqa: BLE001, S112 - checked again, and counted, as its row is packed
            continue


def _grid(root: Path, mod: str, classes: list[ClassFolder], out: FolderSet) -> dict | None:
    """The grid of one modality's files (its kind's `grid_files` beside them, the same for every folder)."""
    kind = get_kind(out.modalities[mod])
    if not kind.grid_files:
        return None
    folders = [f.path / next(iter(f.files[mod].values())).parent.name for f in classes if f.files.get(mod)]
    found = {d: {n: _nearest(n, d, root) for n in kind.grid_files} for d in folders}
    complete = [d for d, files in found.items() if all(files.values())]
    if not complete:
        return None
    if len(complete) < len(found):
        lack = [f"{_rel(d, root)}/ ({', '.join(n for n, p in found[d].items() if p is None)})"
                for d in found if d not in complete]
        raise DataError(f"{root}: {', '.join(kind.grid_files)} found beside {len(complete)} of {len(found)} "
                        f"{mod} folders; none for {len(lack)}: {', '.join(lack[:SHOWN])}")
    first = {Path(n).stem: _load(p, root) for n, p in found[complete[0]].items()}
    for d in complete[1:]:
        for n, p in found[d].items():
            other = _load(p, root)
            if other.shape != first[Path(n).stem].shape or not np.allclose(other, first[Path(n).stem], atol=1e-6):
                raise DataError(f"{_rel(p, root)} differs from {_rel(found[complete[0]][n], root)}: one grid per "
                                f"modality is expected (split the folders into separate packs)")
    where = f"{root} ({mod})"
    try:
        grid = kind.read_grid(first, _readable([p[mod] for p in out.paths]), where)
    except UsageError as err:
        raise DataError(str(err)) from None
    files = sorted({_rel(p, root) for d in complete for p in found[d].values()})
    return {**grid, "files": files[:20]}


def add_points(out: FolderSet, source: str, scratch: Path) -> str:
    """A points modality made of each `source` value and its grid (`Kind.to_points`), written to `scratch`;
    returns its name ("points", or "<source>_points" when that is taken)."""
    if source not in out.modalities:
        raise UsageError(f"--points-from {source}: no such modality subfolder (found: {', '.join(out.modalities)})")
    kind, grid = get_kind(out.modalities[source]), out.grids.get(source)
    if not kind.grid_files:
        can = [m for m, k in out.modalities.items() if get_kind(k).grid_files]
        raise UsageError(f"--points-from {source}: {kind.name} values cannot be turned into points "
                         f"(modalities with angle grids: {', '.join(can) or 'none'})")
    if grid is None:
        need = " and ".join(kind.grid_files) or "an angle grid"
        raise UsageError(f"--points-from {source}: needs {need} beside the {source} files "
                         f"(in their folder, class folder or the root), and found none")
    name = "points" if "points" not in out.modalities else f"{source}_points"
    points_kind = kind_for_alias("points")
    if points_kind is None:
        raise UsageError("--points-from: no registered kind holds points")
    counts: Counter = Counter()
    for i, ((_, rec), paths) in enumerate(zip(out.records, out.paths)):
        try:
            cloud = kind.to_points(np.load(paths[source], allow_pickle=False), grid)
        except Exception:  # noqa: BLE001, S112 - the source value's own check names the problem as its row is packed
            continue
        np.save(scratch / f"{i:07d}.npy", cloud, allow_pickle=False)
        rec[name] = str(scratch / f"{i:07d}.npy")
        counts[len(cloud)] += 1
    out.modalities[name] = points_kind
    grid["points"] = {"modality": name, "min_points": min(counts, default=0), "max_points": max(counts, default=0)}
    return name


def read_modality_folders(root: Path, allow_missing: bool = False, points_from: str | None = None,
                          scratch: Path | None = None) -> FolderSet:
    """The samples of a class/modality folder tree (see the module's doc), their kinds and grids; with
    `points_from`, each of that modality's values also as 3-D points (files in `scratch`)."""
    grid_names = {n for k in all_kinds() for n in k.grid_files}
    classes, loose = _scan(root, grid_names)
    modalities = _kinds(root, classes)
    if not modalities:
        raise DataError(f"{root}: no files in the modality subfolders of its class folders")
    dropped, n_dropped = _missing(root, classes, modalities, allow_missing)
    out = FolderSet([], modalities, [], ignored=loose, dropped=dropped, n_dropped=n_dropped)
    _pair(root, classes, modalities, out)
    if not out.records:
        raise DataError(f"{root}: no sample has every modality ({', '.join(modalities)}); "
                        f"{len(out.unpaired)} unpaired files")
    for mod in modalities:
        grid = _grid(root, mod, classes, out)
        out.grids.update({mod: grid} if grid is not None else {})
    if points_from is not None:
        if scratch is None:
            raise UsageError("--points-from needs a scratch folder for the points it makes")
        add_points(out, points_from, scratch)
    return out
