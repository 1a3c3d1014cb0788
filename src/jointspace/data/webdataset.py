"""Where a dataset's samples come from: a jointspace shard folder (with dataset.json) or foreign WebDataset
shards as img2dataset and open_clip_train write them (`jpg`/`png`/`webp`, `txt`, `json`, optional `cls`
per key, no dataset.json), named by URL patterns as open_clip takes them.

A `Source` answers what the rest of `data/` asks of a dataset: its info (what dataset.json holds: the
modalities and their kinds, class names, split sizes), a split's shard URLs, and its decoded samples.
For foreign shards, `Layout` says which member of a sample holds each modality (`data.keys`) and where
the label is (`cls`, a `json` field, or the shard's class folder); unlabelled samples get a label of
their own (a hash of the key), so label positives become instance positives.
"""

from __future__ import annotations

import csv
import hashlib
import tarfile
from collections.abc import Iterator
from dataclasses import dataclass, field
from functools import cached_property
from glob import glob
from pathlib import Path
from typing import Any

import braceexpand

from jointspace.data.shards import (
    INFO_FILE,
    DataError,
    ReadStats,
    decode_value,
    iter_raw,
    iter_samples,
    read_info,
    split_urls,
)
from jointspace.kinds import kind_for_extension

OPENCLIP_KEYS = {"image": "jpg;png;jpeg;webp", "text": "txt"}  # open_clip_train's defaults
LABEL_FROM = ("auto", "cls", "json", "folder", "none")


def expand_urls(spec: str | list[str] | None) -> list[str]:
    """Shard URLs of a spec: brace patterns (`shards/{00000..00099}.tar`), lists of them, several joined
    with `::` (open_clip), `pipe:` commands, local paths, globs and folders (every .tar below them)."""
    parts = [spec] if isinstance(spec, str) else list(spec or [])
    out: list[str] = []
    for part in (p for item in parts for p in str(item).split("::") if p.strip()):
        for url in braceexpand.braceexpand(part.strip()):
            if url.startswith("pipe:") or "://" in url:
                out.append(url)
            elif Path(url).is_dir():
                out += sorted(str(p) for p in Path(url).rglob("*.tar"))
            elif any(c in url for c in "*?["):
                out += sorted(glob(url, recursive=True))
            else:
                out.append(url)
    return out


def key_label(key: str) -> int:
    """A label of a sample's own (62-bit hash of its key), for shards without labels."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") >> 2


@dataclass
class Layout:
    """Which members of a foreign sample hold each modality, and where its label is."""

    keys: dict[str, list[str]]  # modality -> member names (extensions), first present wins
    label_from: str = "auto"
    label_key: str = "label"
    class_names: list[str] = field(default_factory=list)

    def label(self, raw: dict, meta: dict) -> int | str | None:
        """The raw label of a sample (int, class name, or None when it has none)."""
        tries = {"cls": lambda: int(raw["cls"].decode().strip()) if "cls" in raw else None,
                 "json": lambda: meta.get(self.label_key),
                 "folder": lambda: Path(str(raw.get("__url__", ""))).parent.name or None}
        order = ("cls", "json") if self.label_from == "auto" else (self.label_from,)  # folders: set by the source
        for where in order:
            if where != "none" and (value := tries[where]()) is not None:
                return value
        return None

    def _value(self, raw: dict, meta: dict, m: str) -> Any:
        """Modality m of a sample: its first present member; with `<member>.1`, `.2`... or a json list
        (member `json.<field>`), the list of all of them (several captions)."""
        for k in self.keys[m]:
            if k.startswith("json.") and isinstance(meta.get(k[5:]), (list, str)):
                value = meta[k[5:]]
                return [str(v) for v in value] if isinstance(value, list) else value
            if k not in raw:
                continue
            extra = sorted((n for n in raw if n.startswith(k + ".") and n[len(k) + 1:].isdigit()),
                           key=lambda n: int(n[len(k) + 1:]))
            values = [decode_value(k.rpartition(".")[2] or k, raw[n]) for n in (k, *extra)]
            return values if extra else values[0]
        raise ValueError(f"missing {m} (none of {';'.join(self.keys[m])})")

    def decode(self, raw: dict, modalities: list[str] | None) -> dict:
        """A foreign sample as {key, label, meta, <modality>: value}; raises naming what is missing."""
        key = raw.get("__key__", "?")
        meta = decode_value("json", raw["json"]) if "json" in raw else {}
        sample: dict[str, Any] = {"key": key, "meta": meta if isinstance(meta, dict) else {"json": meta}}
        for m in modalities or list(self.keys):
            sample[m] = self._value(raw, sample["meta"], m)
        label = self.label(raw, sample["meta"])
        if isinstance(label, str) and not label.lstrip("-").isdigit():
            if label not in self.class_names:
                raise ValueError(f"label {label!r} is not one of data.class_names")
            label = self.class_names.index(label)
        sample["label"] = key_label(key) if label is None else int(label)
        return sample


class Source:
    """A dataset: its info, its splits' shard URLs and its samples (see the module docstring)."""

    layout: Layout | None = None
    name: str = "data"

    @property
    def info(self) -> dict:
        raise NotImplementedError

    def urls(self, split: str) -> list[str]:
        raise NotImplementedError

    def has_split(self, split: str) -> bool:
        raise NotImplementedError

    def samples(self, urls: list[str], stats: ReadStats, modalities: list[str] | None = None) -> Iterator[dict]:
        return iter_samples(urls, stats, modalities, self.layout.decode if self.layout else None)

    def __str__(self) -> str:
        return self.name


class FolderSource(Source):
    """A jointspace shard folder: `<root>/<split>/*.tar` and dataset.json."""

    def __init__(self, root: str | Path):
        self.root, self.name = Path(root), str(root)

    @cached_property
    def info(self) -> dict:
        return read_info(self.root)

    def urls(self, split: str) -> list[str]:
        return split_urls(self.root, split)

    def has_split(self, split: str) -> bool:
        return (self.root / split).is_dir()


class WebSource(Source):
    """Foreign WebDataset shards, split by split; the info is read from the samples themselves."""

    def __init__(self, splits: dict[str, list[str]], layout: Layout, kinds: dict[str, str] | None = None,
                 name: str = "shards"):
        self.splits = {s: u for s, u in splits.items() if u}
        self.layout, self.given_kinds, self.name = layout, dict(kinds or {}), name
        if not self.splits:
            raise DataError(f"{name}: no shard URLs")

    def urls(self, split: str) -> list[str]:
        if split not in self.splits:
            raise DataError(f"{self.name}: no shards for split {split!r} (set data.{split}_urls)"
                            if split != "train" else f"{self.name}: no train shards (data.urls)")
        return self.splits[split]

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def _kinds(self) -> dict[str, str]:
        kinds = {}
        for m, members in self.layout.keys.items():
            first = "txt" if members[0].startswith("json.") else members[0]  # a json field holds strings
            kind = self.given_kinds.get(m) or kind_for_extension(first.rpartition(".")[2] or first)
            if kind is None:
                raise DataError(f"data.keys.{m}: no kind reads .{members[0]}; set data.kinds.{m}")
            kinds[m] = kind
        return kinds

    def _class_names(self) -> list[str]:
        """Given names, else the class folders' names, else the string labels of the first split's samples."""
        lay = self.layout
        if lay.class_names or lay.label_from in ("cls", "none"):
            return list(lay.class_names)
        first = self.splits.get("train") or next(iter(self.splits.values()))
        folders = sorted({Path(u).parent.name for u in first})  # the seed's layout: <class>/<shard>.tar
        if lay.label_from == "folder" or (lay.label_from == "auto" and len(folders) > 1 and not self._has_labels()):
            lay.label_from = "folder"
            return folders
        names = set()
        for raw in iter_raw(next(iter(self.splits.values())), ReadStats()):
            meta = decode_value("json", raw["json"]) if "json" in raw else {}
            label = lay.label(raw, meta if isinstance(meta, dict) else {})
            if isinstance(label, str) and not label.lstrip("-").isdigit():
                names.add(label)
        return sorted(names)

    def _has_labels(self) -> bool:
        """Whether the first sample carries a cls member or a json label."""
        raw = next(iter_raw(next(iter(self.splits.values()))[:1], ReadStats()), None)
        if raw is None:
            return False
        meta = decode_value("json", raw["json"]) if "json" in raw else {}
        return "cls" in raw or (isinstance(meta, dict) and self.layout.label_key in meta)

    @cached_property
    def info(self) -> dict:
        self.layout.class_names = self._class_names()
        labelled = self.layout.label_from != "none" and (self.layout.label_from == "folder" or self._has_labels())
        return {"modalities": self._kinds(), "class_names": list(self.layout.class_names), "labelled": labelled,
                "splits": {s: {"n_samples": count_samples(u), "shards": u} for s, u in self.splits.items()},
                "source": self.name}


class CsvSource(Source):
    """An open_clip-style CSV/TSV per split (`--dataset-type csv`): an image path column (relative to the
    CSV's folder) and a caption column, optionally a label column (`data.label_key`); read row by row."""

    def __init__(self, splits: dict[str, str], img_key: str, caption_key: str, separator: str, label_key: str,
                 class_names: list[str] | None = None):
        self.splits = {s: Path(p) for s, p in splits.items() if p}
        self.img_key, self.caption_key, self.sep, self.label_key = img_key, caption_key, separator, label_key
        self.given_names, self.name = list(class_names or []), str(self.splits.get("train", ""))

    def _rows(self, path: Path) -> list[dict]:
        if not path.is_file():
            raise DataError(f"{path}: no such CSV file")
        with path.open(newline="", encoding="utf-8-sig") as f:
            rows = list(csv.DictReader(f, delimiter=self.sep))
        if rows and (self.img_key not in rows[0] or self.caption_key not in rows[0]):
            raise DataError(f"{path}: columns {list(rows[0])} lack {self.img_key!r} (data.csv_img_key) or "
                            f"{self.caption_key!r} (data.csv_caption_key); separator {self.sep!r}")
        return rows

    @cached_property
    def info(self) -> dict:
        first = self._rows(self.splits.get("train") or next(iter(self.splits.values())))
        labelled = bool(first) and self.label_key in first[0]
        names = self.given_names or (sorted({r[self.label_key] for r in first}, key=_natural) if labelled else [])
        return {"modalities": {"image": "image", "text": "text"}, "class_names": names, "labelled": labelled,
                "splits": {s: {"n_samples": len(self._grouped(p))} for s, p in self.splits.items()},
                "source": self.name}

    def _grouped(self, path: Path) -> list[tuple[int, list[dict]]]:
        """Rows grouped by image (several rows of one image: several captions), in order of first row."""
        groups: dict[str, tuple[int, list[dict]]] = {}
        for i, row in enumerate(self._rows(path)):
            groups.setdefault(row.get(self.img_key) or f"#{i}", (i, []))[1].append(row)
        return list(groups.values())

    def urls(self, split: str) -> list[str]:
        if split not in self.splits:
            raise DataError(f"{self.name}: no CSV for split {split!r} (set data.{split}_csv)")
        return [str(self.splits[split])]

    def has_split(self, split: str) -> bool:
        return split in self.splits

    def samples(self, urls: list[str], stats: ReadStats, modalities: list[str] | None = None) -> Iterator[dict]:
        names = self.info["class_names"]
        for url in urls:
            base = Path(url).resolve().parent
            for i, rows in self._grouped(Path(url)):
                row, key = rows[0], f"{Path(url).stem}-{i:07d}"
                try:
                    image = decode_value(Path(row[self.img_key]).suffix.lstrip(".").lower() or "png",
                                         (base / row[self.img_key]).read_bytes())
                    label = row.get(self.label_key)
                    label = key_label(key) if label is None else (int(label) if not names else names.index(label))
                    captions = [r[self.caption_key] for r in rows]
                    sample = {"key": key, "image": image, "text": captions if len(captions) > 1 else captions[0],
                              "label": label, "meta": {"path": row[self.img_key]}}
                except Exception as exn:  # noqa: BLE001 - any unusable row is skipped and counted
                    stats.record(f"{url}: row {i + 1}: {type(exn).__name__}: {exn}")
                    continue
                stats.n_ok += 1
                yield {k: v for k, v in sample.items() if modalities is None or k not in ("image", "text")
                       or k in modalities}


def _natural(name: str) -> tuple:
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


def count_samples(urls: list[str]) -> int | None:
    """Samples (distinct keys) in local tar shards, from their headers only; None when any is not local."""
    n = 0
    for url in urls:
        if not Path(url).is_file():
            return None
        try:
            with tarfile.open(url) as tar:
                n += len({m.name.split(".", 1)[0] for m in tar if m.isfile() and not m.name.startswith("__")})
        except (tarfile.TarError, OSError):
            continue  # counted as skipped when read
    return n


def parse_keys(keys: dict[str, str]) -> dict[str, list[str]]:
    """{modality: "jpg;png"} -> {modality: ["jpg", "png"]} (lower-cased member names)."""
    return {m: [k.strip().lower() for k in str(v).split(";") if k.strip()] for m, v in keys.items()}


def source_of(data_cfg) -> Source:
    """The dataset a `data:` section names: a CSV per split (`data.csv`), foreign shards (`data.urls`),
    else the shard folder `data.path`."""
    if data_cfg.csv:
        return CsvSource({"train": data_cfg.csv, "val": data_cfg.val_csv, "test": data_cfg.test_csv},
                         data_cfg.csv_img_key, data_cfg.csv_caption_key, data_cfg.csv_separator,
                         data_cfg.label_key, data_cfg.class_names)
    if not data_cfg.urls:
        return FolderSource(data_cfg.path)
    layout = Layout(parse_keys(data_cfg.keys or OPENCLIP_KEYS), data_cfg.label_from, data_cfg.label_key,
                    list(data_cfg.class_names))
    splits = {"train": expand_urls(data_cfg.urls), "val": expand_urls(data_cfg.val_urls),
              "test": expand_urls(data_cfg.test_urls)}
    return WebSource(splits, layout, data_cfg.kinds, name=str(data_cfg.urls))


def as_source(root: str | Path | Source) -> Source:
    """A Source for a shard folder path (or the Source itself)."""
    return root if isinstance(root, Source) else FolderSource(root)


def shards_arg(text: str | Path, data_cfg) -> Source:
    """A command's SHARDS argument: a jointspace shard folder, else foreign shard URLs read with the run's
    `data.keys` and labels."""
    path = Path(str(text))
    if (path / INFO_FILE).exists():
        return FolderSource(path)
    if path.suffix.lower() in (".csv", ".tsv"):
        return source_of(data_cfg.model_copy(update={"csv": str(text), "val_csv": None, "test_csv": None}))
    return source_of(data_cfg.model_copy(update={"urls": str(text), "val_urls": None, "test_urls": None}))


__all__ = [
    "OPENCLIP_KEYS",
    "FolderSource",
    "Layout",
    "Source",
    "WebSource",
    "as_source",
    "count_samples",
    "expand_urls",
    "key_label",
    "parse_keys",
    "shards_arg",
    "source_of",
]
