"""Foreign WebDataset shards as a `Source` (`WebSource`): shards as img2dataset and open_clip_train write
them (`jpg`/`png`/`webp`, `txt`, `json`, optional `cls` per key, no dataset.json), named by URL patterns
as open_clip takes them.

`Layout` says which member of a sample holds each modality (`data.keys`) and where the label is (`cls`,
a `json` field, or the shard's class folder); unlabelled samples get a label of their own (a hash of the
key: `source.key_label`), so label positives become instance positives.
"""

from __future__ import annotations

import tarfile
from dataclasses import dataclass, field
from functools import cached_property
from glob import glob
from pathlib import Path
from typing import Any

import braceexpand

from jointspace.data.shards import DataError, ReadStats, decode_value, iter_raw
from jointspace.data.source import Source, key_label, natural
from jointspace.errors import UsageError
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


@dataclass
class Layout:
    """Which members of a foreign sample hold each modality, and where its label is."""

    keys: dict[str, list[str]]  # modality -> member names (extensions), first present wins
    label_from: str = "auto"
    label_key: str = "label"
    class_names: list[str] = field(default_factory=list)
    labelled: bool = False  # set by the source: then a sample without a label is skipped, not made its own class

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
            if k.startswith("json.") and isinstance(meta.get(k[5:]), (list, str)) and meta[k[5:]]:
                value = meta[k[5:]]
                return [str(v) for v in value] if isinstance(value, list) else value
            if k not in raw:
                continue
            extra = sorted((n for n in raw if n.startswith(k + ".") and n[len(k) + 1:].isdigit()),
                           key=lambda n: int(n[len(k) + 1:]))
            values = [decode_value(k.rpartition(".")[2] or k, raw[n]) for n in (k, *extra)]
            return values if extra else values[0]
        raise UsageError(f"missing {m} (none of {';'.join(self.keys[m])})")

    def decode(self, raw: dict, modalities: list[str] | None) -> dict:
        """A foreign sample as {key, label, meta, <modality>: value}; raises naming what is missing."""
        key = raw.get("__key__", "?")
        meta = decode_value("json", raw["json"]) if "json" in raw else {}
        sample: dict[str, Any] = {"key": key, "meta": meta if isinstance(meta, dict) else {"json": meta}}
        for m in modalities or list(self.keys):
            sample[m] = self._value(raw, sample["meta"], m)
        sample["label"] = self.label_index(self.label(raw, sample["meta"]), f"{raw.get('__url__', '')}/{key}")
        return sample

    def label_index(self, label, uid: str) -> int:
        """A raw label as a class index: a class name by its place in `class_names` (names that look like
        numbers too), else an integer; no label: a class of the sample's own (hash of `uid`)."""
        if label is None or label == "":
            if self.labelled:
                raise UsageError("no label")
            return key_label(uid)
        if str(label) in self.class_names:
            return self.class_names.index(str(label))
        if isinstance(label, int) or str(label).lstrip("-").isdigit():
            index = int(label)
            if index < 0 or (self.class_names and index >= len(self.class_names)):
                raise UsageError(f"label {index} is out of range (classes: {len(self.class_names)})")
            return index
        raise UsageError(f"label {label!r} is not one of data.class_names")


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
            raise DataError(f"{self.name}: no shards for split {split!r} (set data.{split}_urls; shards named on "
                            "the command line are one split: pass --split train)"
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
        folders = sorted({Path(u).parent.name for u in first}, key=natural)  # the seed's <class>/<shard>.tar
        if lay.label_from == "folder" or (lay.label_from == "auto" and len(folders) > 1 and not self._has_labels()):
            lay.label_from = "folder"
            return folders
        if not self._has_string_labels():
            return []
        names = set()
        for raw in iter_raw(next(iter(self.splits.values())), ReadStats()):
            meta = decode_value("json", raw["json"]) if "json" in raw else {}
            label = lay.label(raw, meta if isinstance(meta, dict) else {})
            if isinstance(label, str) and not label.lstrip("-").isdigit():
                names.add(label)
        return sorted(names, key=natural)

    @cached_property
    def _first_raw(self) -> dict | None:
        """The first raw sample of the first split (read once; the label checks all look at it)."""
        return next(iter_raw(next(iter(self.splits.values()))[:1], ReadStats()), None)

    def _has_string_labels(self) -> bool:
        """Whether the first sample's label is a class name (only then are the train split's labels read
        ahead to collect the names)."""
        raw = self._first_raw
        if raw is None or "cls" in raw and self.layout.label_from in ("auto", "cls"):
            return False
        meta = decode_value("json", raw["json"]) if "json" in raw else {}
        label = self.layout.label(raw, meta if isinstance(meta, dict) else {})
        return isinstance(label, str) and not label.lstrip("-").isdigit()

    def _has_labels(self) -> bool:
        """Whether the first sample carries a cls member or a json label."""
        raw = self._first_raw
        if raw is None:
            return False
        meta = decode_value("json", raw["json"]) if "json" in raw else {}
        return "cls" in raw or (isinstance(meta, dict) and self.layout.label_key in meta)

    @cached_property
    def info(self) -> dict:
        self.layout.class_names = self._class_names()
        labelled = self.layout.label_from != "none" and (self.layout.label_from == "folder" or self._has_labels())
        self.layout.labelled = labelled
        return {"modalities": self._kinds(), "class_names": list(self.layout.class_names), "labelled": labelled,
                "splits": {s: {"n_samples": count_samples(u), "shards": u} for s, u in self.splits.items()},
                "source": self.name}


def _member_key(name: str) -> str:
    """The sample key of a tar member, as webdataset groups them: its path up to the first dot of its name."""
    path = Path(name.removeprefix("./"))
    return str(path.parent / path.name.split(".", 1)[0])


def count_samples(urls: list[str]) -> int | None:
    """Samples (distinct keys) in local tar shards, from their headers only; None when any is not local."""
    n = 0
    for url in urls:
        if not Path(url).is_file():
            return None
        try:
            with tarfile.open(url) as tar:
                n += len({_member_key(m.name) for m in tar if m.isfile() and not Path(m.name).name.startswith("__")})
        except (tarfile.TarError, OSError):
            continue  # counted as skipped when read
    return n


def parse_keys(keys: dict[str, str]) -> dict[str, list[str]]:
    """{modality: "jpg;png"} -> {modality: ["jpg", "png"]} (lower-cased member names)."""
    return {m: [k.strip().lower() for k in str(v).split(";") if k.strip()] for m, v in keys.items()}


__all__ = ["OPENCLIP_KEYS", "Layout", "WebSource", "count_samples", "expand_urls", "parse_keys"]
