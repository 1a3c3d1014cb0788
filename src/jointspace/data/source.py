"""Which Source a config or a command's argument names: a jointspace shard folder, foreign WebDataset
shards (`data.urls`) or open_clip-style CSVs (`data.csv`)."""

from __future__ import annotations

import re
from pathlib import Path

from jointspace.data.csv_source import CsvSource
from jointspace.data.shards import INFO_FILE, DataError
from jointspace.data.webdataset import (
    OPENCLIP_KEYS,
    FolderSource,
    Layout,
    Source,
    WebSource,
    expand_urls,
    parse_keys,
)


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
    if not path.exists() and not re.search(r"[{}*?\[]|::|^[A-Za-z][\w+.-]*:", str(text)):
        raise DataError(f"{text}: no such shard folder, file or shard pattern")
    if path.suffix.lower() in (".csv", ".tsv"):
        return source_of(data_cfg.model_copy(update={"csv": str(text), "val_csv": None, "test_csv": None,
                                                     "urls": None}))
    return source_of(data_cfg.model_copy(update={"urls": str(text), "val_urls": None, "test_urls": None,
                                                 "csv": None, "val_csv": None, "test_csv": None}))


__all__ = ["CsvSource", "FolderSource", "Source", "as_source", "shards_arg", "source_of"]
