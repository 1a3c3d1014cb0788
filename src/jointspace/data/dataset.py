"""A split of a shard folder decoded once into tensors, and seeded batch iteration over it."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jointspace.data import transforms as T
from jointspace.data.shards import DataError, ReadStats, iter_samples, read_info, split_urls


@dataclass
class SplitData:
    """All samples of one split as tensors: `inputs[modality]` plus labels, keys and raw captions."""

    inputs: dict[str, torch.Tensor]
    labels: torch.Tensor
    keys: list[str]
    kinds: dict[str, str]
    class_names: list[str]
    captions: dict[str, list[str]] = field(default_factory=dict)
    raw: dict[str, list[np.ndarray]] = field(default_factory=dict)
    stats: ReadStats = field(default_factory=ReadStats)

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gather a batch by sample indices."""
        out = {name: t[idx] for name, t in self.inputs.items()}
        out["label"] = self.labels[idx]
        return out

    def subset(self, idx: torch.Tensor) -> SplitData:
        """A new SplitData holding only `idx`."""
        ii = idx.tolist()
        return SplitData(
            inputs={k: v[idx] for k, v in self.inputs.items()},
            labels=self.labels[idx],
            keys=[self.keys[i] for i in ii],
            kinds=self.kinds,
            class_names=self.class_names,
            captions={k: [v[i] for i in ii] for k, v in self.captions.items()},
            raw={k: [v[i] for i in ii] for k, v in self.raw.items()},
            stats=self.stats,
        )


def to_inputs(
    values: dict[str, list], kinds: dict[str, str], image_size: int, context_length: int, max_frames: int
) -> dict[str, torch.Tensor]:
    """Convert decoded per-modality lists into model input tensors by kind."""
    inputs: dict[str, torch.Tensor] = {}
    for name, vals in values.items():
        kind = kinds[name]
        if kind == "image":
            inputs[name] = T.image_to_tensor(vals, image_size)
        elif kind == "text":
            inputs[name] = T.make_tokenizer(context_length)(vals)
        elif kind == "sequence":
            inputs[name], inputs[f"{name}_len"] = T.sequence_to_tensor(vals, max_frames)
        elif kind == "range":
            inputs[name] = T.range_to_tensor(vals)
        else:
            raise DataError(f"modality {name!r}: unknown kind {kind!r} (known: {', '.join(T.KINDS)})")
    return inputs


def load_split(
    root: str | Path,
    split: str,
    modalities: list[str],
    image_size: int = 32,
    context_length: int = 16,
    max_frames: int = 96,
    max_bad_fraction: float = 0.01,
    keep_raw: bool = False,
) -> SplitData:
    """Read and decode one split; fails (naming files) past `max_bad_fraction` unreadable samples."""
    info = read_info(root)
    kinds = info["modalities"]
    unknown = [m for m in modalities if m not in kinds]
    if unknown:
        raise DataError(f"{root}: modalities {unknown} not in this dataset (has: {', '.join(kinds)})")
    stats = ReadStats(n_expected=info.get("splits", {}).get(split, {}).get("n_samples"))
    values: dict[str, list] = {m: [] for m in modalities}
    labels, keys = [], []
    for sample in iter_samples(split_urls(root, split), stats, modalities):
        for m in modalities:
            values[m].append(sample[m])
        labels.append(sample["label"])
        keys.append(sample["key"])
    stats.check(max_bad_fraction, f"{root}/{split}")
    if not labels:
        raise DataError(f"{root}/{split}: no readable samples")
    sub_kinds = {m: kinds[m] for m in modalities}
    return SplitData(
        inputs=to_inputs(values, sub_kinds, image_size, context_length, max_frames),
        labels=torch.tensor(labels, dtype=torch.long),
        keys=keys,
        kinds=sub_kinds,
        class_names=list(info.get("class_names", [])),
        captions={m: values[m] for m in modalities if kinds[m] == "text"},
        raw={m: values[m] for m in modalities if kinds[m] != "text"} if keep_raw else {},
        stats=stats,
    )


def epoch_batches(
    n_samples: int, batch_size: int, seed: int, epoch: int, shuffle: bool = True, drop_last: bool = True
) -> Iterator[torch.Tensor]:
    """Index batches for one epoch; the order depends only on (seed, epoch), so resume is exact."""
    if shuffle:
        gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
        order = torch.randperm(n_samples, generator=gen)
    else:
        order = torch.arange(n_samples)
    stop = n_samples - (n_samples % batch_size if drop_last else 0)
    for start in range(0, stop, batch_size):
        yield order[start : start + batch_size]


def steps_per_epoch(n_samples: int, batch_size: int) -> int:
    """Optimizer steps in one epoch with drop_last."""
    return n_samples // batch_size
