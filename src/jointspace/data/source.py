"""What a dataset is to the rest of `data/`: a `Source`, and the one every dataset `jointspace data` writes
is, the shard folder (`FolderSource`).

A `Source` answers what the rest of `data/` asks of a dataset: its info (what dataset.json holds: the
modalities and their kinds, class names, split sizes), a split's shard URLs, and its decoded samples.
The other sources are foreign WebDataset shards (`webdataset.WebSource`) and open_clip-style CSVs
(`csv_source.CsvSource`); which one a config or a command's argument names, and mixing several, is
`sources.py`. Unlabelled samples of any source get a label of their own (`key_label`).
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from functools import cached_property
from pathlib import Path
from typing import Protocol

from jointspace.data.shards import ReadStats, iter_samples, read_info, split_urls


class SampleLayout(Protocol):
    """How a source's raw samples decode (foreign shards: `webdataset.Layout`)."""

    def decode(self, raw: dict, modalities: list[str] | None) -> dict: ...


class Source:
    """A dataset: its info, its splits' shard URLs and its samples (see the module docstring)."""

    layout: SampleLayout | None = None  # None: jointspace's own samples
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


def as_source(root: str | Path | Source) -> Source:
    """A Source for a shard folder path (or the Source itself)."""
    return root if isinstance(root, Source) else FolderSource(root)


def key_label(key: str) -> int:
    """A label of a sample's own (62-bit hash of its key), for datasets without labels."""
    return int.from_bytes(hashlib.sha1(key.encode()).digest()[:8], "big") >> 2


def natural(name: str) -> tuple:
    """Sort key of class names: numbers by value (1, 2, 10), then names."""
    return (0, int(name), "") if name.lstrip("-").isdigit() else (1, 0, name)


__all__ = ["FolderSource", "SampleLayout", "Source", "as_source", "key_label", "natural"]
