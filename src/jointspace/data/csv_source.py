"""open_clip-style CSV datasets (`--dataset-type csv`): a CSV/TSV per split with an image path column
(relative to the CSV's folder) and a caption column, read row by row without packing; several rows of one
image are its captions."""

from __future__ import annotations

import csv
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path

from jointspace.data.shards import DataError, ReadStats, decode_value
from jointspace.data.source import Source, key_label, natural
from jointspace.errors import UsageError


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
        names = self.given_names or (sorted({r[self.label_key] for r in first}, key=natural) if labelled else [])
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

    def _label(self, value: str | None, names: list[str], uid: str) -> int:
        if value is None or value == "":
            if self.info["labelled"]:
                raise UsageError(f"no {self.label_key!r} value")
            return key_label(uid)
        if value in names:
            return names.index(value)
        if value.lstrip("-").isdigit() and (not names or 0 <= int(value) < len(names)):
            return int(value)
        raise UsageError(f"label {value!r} is not one of the classes {names}")

    def samples(self, urls: list[str], stats: ReadStats, modalities: list[str] | None = None) -> Iterator[dict]:
        names = self.info["class_names"]
        for url in urls:
            base = Path(url).resolve().parent
            for i, rows in self._grouped(Path(url)):
                row, key = rows[0], f"{Path(url).stem}-{i:07d}"
                try:
                    image = decode_value(Path(row[self.img_key]).suffix.lstrip(".").lower() or "png",
                                         (base / row[self.img_key]).read_bytes())
                    label = self._label(row.get(self.label_key), names, f"{url}/{key}")
                    captions = [r[self.caption_key] for r in rows]
                    values = {"image": image, "text": captions if len(captions) > 1 else captions[0]}
                except Exception as exn:  # noqa: BLE001 - any unusable row is skipped and counted
                    stats.record(f"{url}: row {i + 1}: {type(exn).__name__}: {exn}")
                    continue
                stats.n_ok += 1
                yield {"key": key, "label": label, "meta": {"path": row[self.img_key]},
                       **{m: v for m, v in values.items() if modalities is None or m in modalities}}


