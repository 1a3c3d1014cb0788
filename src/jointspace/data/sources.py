"""A run's sources: which `Source` a config or a command's argument names (a jointspace shard folder,
foreign WebDataset shards `data.urls`, open_clip-style CSVs `data.csv`), and the train split mixed from
several of them (`data.sources`), with per-source upsampling and resampling.

As open_clip's `--train-data-upsampling-factors` with `--dataset-resampled`: with `data.resampled`,
every epoch draws `samples_per_epoch` samples with replacement, a sample of source i with probability
proportional to weight_i (so source i gets weight_i x size_i of the mass). The draw depends only on
(seed, epoch), so a resumed run sees exactly the batches it would have seen.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jointspace.config import DataConfig
from jointspace.data.batch_sampler import duplicate_values, no_duplicate_batches
from jointspace.data.csv_source import CsvSource
from jointspace.data.dataset import SplitData, apply_label_map, concat_splits, epoch_batches, load_split
from jointspace.data.shards import INFO_FILE, DataError
from jointspace.data.source import FolderSource, Source
from jointspace.data.webdataset import OPENCLIP_KEYS, Layout, WebSource, expand_urls, parse_keys
from jointspace.kinds import Prep

# ---- which Source: a config's `data:` section, a command's SHARDS argument ----


def source_of(data_cfg: DataConfig) -> Source:
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


def shards_arg(text: str | Path, data_cfg: DataConfig) -> Source:
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


# ---- the train split mixed from several sources (`data.sources`) ----


def load_sources(data_cfg: DataConfig, split: str, class_names: list[str] | None = None,
                 **load_kw) -> SplitData:
    """One split concatenated from every `data.sources` folder; classes unified by name, then label-mapped."""
    sources = [shards_arg(s.path, data_cfg) for s in data_cfg.sources]
    parts = [load_split(src, split, **load_kw) for src in sources]
    scale = {m: max(p.prep.max_range[m] for p in parts) for m in parts[0].prep.max_range}
    if any(p.prep.max_range != scale for p in parts):  # one range scale for all: the largest of any source
        fixed = Prep.from_json({**parts[0].prep.to_json(), "channels": {}, "max_range": scale})
        parts = [p if p.prep.max_range == scale else load_split(src, split, **{**load_kw, "prep": fixed})
                 for p, src in zip(parts, sources, strict=True)]
    data = concat_splits(parts, class_names)
    if data_cfg.label_map:
        data.class_names, data.labels = apply_label_map(data.class_names, data.labels, data_cfg.label_map,
                                                        "data.sources")
    data.source_sizes = [len(p) for p in parts]
    return data


def source_label_lookups(data_cfg: DataConfig, class_names: list[str] | None = None
                         ) -> tuple[list[str], list[np.ndarray | None]]:
    """Without decoding anything: the train split's class names, unified over `data.sources` (or just
    `data.path`) by name with `class_names` first and then label-mapped, as `load_sources` makes them,
    and per source the array that re-indexes its stored labels into them (None: kept as stored)."""
    sources = [shards_arg(s.path, data_cfg) for s in data_cfg.sources] or [source_of(data_cfg)]
    own = [list(s.info.get("class_names", [])) for s in sources]
    names = list(dict.fromkeys([*(class_names or []), *(n for part in own for n in part)]))
    final = names
    to_final = np.arange(len(names))
    if data_cfg.label_map and names:
        final, mapped = apply_label_map(names, torch.arange(len(names)), data_cfg.label_map, "data.sources")
        to_final = mapped.numpy()
    lookups = [to_final[[names.index(n) for n in part]] if part else None for part in own]
    return final, lookups


def source_mass(sizes: list[int], weights: list[float]) -> torch.Tensor:
    """Probability of drawing from each source: weight x size, normalised."""
    mass = torch.tensor([w * n for w, n in zip(weights, sizes, strict=True)], dtype=torch.float64)
    return mass / mass.sum()


def resampled_indices(sizes: list[int], weights: list[float], n_samples: int, seed: int, epoch: int) -> torch.Tensor:
    """`n_samples` indices into the concatenated sources, drawn with replacement; depends on (seed, epoch) only."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    src = torch.multinomial(source_mass(sizes, weights), n_samples, replacement=True, generator=gen)
    sizes_t = torch.tensor(sizes, dtype=torch.long)
    starts = torch.cumsum(sizes_t, 0) - sizes_t
    offset = (torch.rand(n_samples, generator=gen, dtype=torch.float64) * sizes_t[src]).long()
    return starts[src] + offset.clamp(max=sizes_t[src] - 1)


@dataclass
class TrainSampler:
    """Which training samples each epoch visits: a seeded permutation, or a weighted draw with replacement;
    with `duplicates` (data.batch_sampler: no_duplicates: what must not repeat in a batch, asked each
    epoch) the permutation is cut into batches without duplicates (`data.batch_sampler`)."""

    n_data: int
    sizes: list[int]
    weights: list[float]
    resampled: bool = False
    samples_per_epoch: int | None = None
    duplicates: Callable[[], np.ndarray] | None = None

    @classmethod
    def from_config(cls, data_cfg: DataConfig, train: SplitData) -> TrainSampler:
        sizes = train.source_sizes or [len(train)]
        weights = [s.weight for s in data_cfg.sources] if train.source_sizes else [1.0]
        duplicates = (lambda: duplicate_values(train)) if data_cfg.batch_sampler == "no_duplicates" else None
        return cls(len(train), sizes, weights, data_cfg.resampled, data_cfg.samples_per_epoch, duplicates)

    @property
    def n_samples(self) -> int:
        """Samples per epoch."""
        return (self.samples_per_epoch or sum(self.sizes)) if self.resampled else self.n_data

    def batches(self, batch_size: int, seed: int, epoch: int) -> Iterator[torch.Tensor]:
        """Index batches of one epoch (drop_last)."""
        if self.duplicates is not None:
            yield from no_duplicate_batches(self.duplicates(), batch_size, seed, epoch, self.n_data // batch_size)
            return
        if not self.resampled:
            yield from epoch_batches(self.n_data, batch_size, seed, epoch)
            return
        idx = resampled_indices(self.sizes, self.weights, self.n_samples, seed, epoch)
        for start in range(0, self.n_samples - self.n_samples % batch_size, batch_size):
            yield idx[start : start + batch_size]
