"""A split of a shard folder decoded once into tensors, and seeded batch iteration over it."""

from __future__ import annotations

import sys
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch

from jointspace.data.shards import DataError, ReadStats
from jointspace.data.source import Source, as_source
from jointspace.kinds import Prep, fit_prep, get_kind, input_channels, ready, to_inputs


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
    source_sizes: list[int] = field(default_factory=list)  # consecutive blocks from data.sources (empty: one)
    prep: Prep = field(default_factory=Prep)  # how the values became `inputs` (fixed per run)
    # modality -> (inputs of every variant [M, ...], owner sample of each [M]) where samples have several
    # values (captions); `inputs[modality]` then holds the values drawn for the current epoch
    variants: dict[str, tuple[torch.Tensor, torch.Tensor]] = field(default_factory=dict)
    labelled: bool = True  # False: the data had no labels, each sample is a class of its own

    def draw_variants(self, seed: int, epoch: int) -> None:
        """Pick one variant (caption) per sample for this epoch into `inputs`; a pure function of (seed, epoch)."""
        for m, (values, owner) in self.variants.items():
            counts = torch.bincount(owner.cpu(), minlength=len(self))
            starts = torch.cumsum(counts, 0) - counts
            gen = torch.Generator().manual_seed(seed * 1_000_003 + epoch + 7)
            pick = starts + (torch.rand(len(self), generator=gen) * counts).long().clamp(max=counts - 1)
            self.inputs[m] = values[pick.to(values.device)]

    def __len__(self) -> int:
        return len(self.labels)

    def batch(self, idx: torch.Tensor) -> dict[str, torch.Tensor]:
        """Gather a batch by sample indices, each input as its tower takes it (uint8 images are normalised
        here, on the device the split is on: `Kind.on_device`)."""
        out = ready({name: t[idx] for name, t in self.inputs.items()}, self.kinds)
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
            prep=self.prep,
            variants={m: _kept_variants(v, o, idx, len(self)) for m, (v, o) in self.variants.items()},
        )


def recorded_range(prep: Prep, info: dict, kinds: dict[str, str], max_range: float | None) -> Prep:
    """`prep` with max_range filled for ranged modalities it lacks: the config's value, else dataset.json's
    `max_range` (a number, or {modality: number})."""
    stored = info.get("max_range")
    fill = {}
    for m, kind in kinds.items():
        if not get_kind(kind).ranged or m in prep.max_range:
            continue
        value = max_range if max_range is not None else (stored.get(m) if isinstance(stored, dict) else stored)
        if value is not None:
            fill[m] = float(value)
    return prep.updated(max_range=fill) if fill else prep


def load_split(
    root: str | Path | Source,
    split: str,
    modalities: list[str],
    prep: Prep | None = None,
    max_bad_fraction: float = 0.01,
    keep_raw: bool = False,
    label_map: dict[str, str] | None = None,
    max_range: float | None = None,
) -> SplitData:
    """Read and decode one split; fails (naming files) past `max_bad_fraction` unreadable samples.

    `label_map` {old class name: new} merges classes. `prep` fixes how values become tensors: its sizes,
    its text towers' tokenizers (default OpenCLIP BPE) and, for a run's Prep, what it recorded (default:
    `Prep()`, every kind's default sizes); what normalisation still needs (a range modality's
    `max_range`: `max_range`, else dataset.json's, else this split's largest) is fixed from the data.
    `root`: a shard folder, or any Source (foreign WebDataset shards)."""
    source = as_source(root)
    info = source.info
    kinds = info["modalities"]
    unknown = [m for m in modalities if m not in kinds]
    if unknown:
        raise DataError(f"{root}: modalities {unknown} not in this dataset (has: {', '.join(kinds)})")
    values, labels, keys, stats = _read(source, split, modalities, info, max_bad_fraction)
    sub_kinds = {m: kinds[m] for m in modalities}
    variants, values = split_variants(values)
    prep = fit_prep(values, sub_kinds, recorded_range(prep or Prep(), info, sub_kinds, max_range))
    inputs = to_inputs(values, sub_kinds, prep)
    every = {m: (to_inputs({m: flat}, sub_kinds, prep)[m], owner) for m, (flat, owner) in variants.items()}
    class_names, label_t = list(info.get("class_names", [])), torch.tensor(labels, dtype=torch.long)
    labelled = info.get("labelled", True)
    if not labelled:  # unlabelled shards: sample i is class i (instance positives)
        label_t = torch.arange(len(labels))
    if label_map:
        class_names, label_t = apply_label_map(class_names, label_t, label_map, f"{root}/{split}")
    return SplitData(
        inputs=inputs,
        labels=label_t,
        keys=keys,
        kinds=sub_kinds,
        class_names=class_names,
        captions={m: values[m] for m in modalities if get_kind(kinds[m]).captions},
        raw={m: values[m] for m in modalities if not get_kind(kinds[m]).captions} if keep_raw else {},
        stats=stats,
        prep=prep.updated(channels=input_channels(inputs, sub_kinds)),
        variants=every,
        labelled=labelled,
    )


def _kept_variants(values: torch.Tensor, owner: torch.Tensor, idx: torch.Tensor,
                   n: int) -> tuple[torch.Tensor, torch.Tensor]:
    """The variants of samples `idx`, owners renumbered to their places in `idx`."""
    where = torch.full((n,), -1, dtype=torch.long)
    where[idx.cpu()] = torch.arange(len(idx))
    new_owner = where[owner.cpu()]
    keep = new_owner >= 0
    order = torch.argsort(new_owner[keep], stable=True)
    return values[keep.to(values.device)][order.to(values.device)], new_owner[keep][order]


def _read(source: Source, split: str, modalities: list[str], info: dict,
          max_bad_fraction: float) -> tuple[dict[str, list], list[int], list[str], ReadStats]:
    """Every readable sample of a split: (values per modality, labels, keys, read statistics); fails past
    `max_bad_fraction` unreadable samples, naming them."""
    stats = ReadStats(n_expected=info.get("splits", {}).get(split, {}).get("n_samples"))
    values: dict[str, list] = {m: [] for m in modalities}
    labels, keys = [], []
    for sample in source.samples(source.urls(split), stats, modalities):
        for m in modalities:
            values[m].append(sample[m])
        labels.append(sample["label"])
        keys.append(sample["key"])
    stats.check(max_bad_fraction, f"{source}/{split}")
    if not labels:
        raise DataError(f"{source}/{split}: no readable samples")
    if stats.n_missing:  # data loss is said, once per split, not only counted
        print(f"warning: {source}/{split}: skipped {stats.n_missing} of {stats.n_ok + stats.n_missing} samples "
              f"({stats.bad_fraction:.1%}); first: {'; '.join(stats.errors[:3])}", file=sys.stderr)
    return values, labels, keys, stats


def split_variants(values: dict[str, list]) -> tuple[dict[str, tuple[list, torch.Tensor]], dict[str, list]]:
    """Modalities whose samples hold lists (several captions): ({modality: (every value, owner index)}, the
    values with each list replaced by its first element)."""
    variants, first = {}, dict(values)
    for m, vals in values.items():
        if any(isinstance(v, list) for v in vals):
            lists = [v if isinstance(v, list) else [v] for v in vals]
            if any(not v for v in lists):
                raise DataError(f"{m}: a sample has an empty list of values")
            variants[m] = ([x for v in lists for x in v],
                           torch.tensor([i for i, v in enumerate(lists) for _ in v], dtype=torch.long))
            first[m] = [v[0] for v in lists]
    return variants, first


def merged_class_names(class_names: list[str], label_map: dict[str, str]) -> list[str]:
    """Class names after a label map, in order of first appearance (merged classes become one)."""
    return list(dict.fromkeys(label_map.get(n, n) for n in class_names))


def apply_label_map(class_names: list[str], labels: torch.Tensor, label_map: dict[str, str],
                    where: str = "data") -> tuple[list[str], torch.Tensor]:
    """Merge classes: (new class names, labels re-indexed into them); unknown old names fail naming them."""
    unknown = [k for k in label_map if k not in class_names]
    if unknown:
        raise DataError(f"{where}: data.label_map names classes {unknown} that the dataset does not have "
                        f"(has: {', '.join(class_names) or 'no class names'})")
    new_names = merged_class_names(class_names, label_map)
    lookup = torch.tensor([new_names.index(label_map.get(n, n)) for n in class_names], dtype=torch.long)
    return new_names, lookup[labels]


def remap_info(info: dict, label_map: dict[str, str] | None) -> dict:
    """dataset.json content as seen through a label map: merged class names and zero-shot prompts."""
    if not label_map:
        return info
    names = list(info.get("class_names", []))
    new_names = merged_class_names(names, label_map)
    out = {**info, "class_names": new_names}
    prompts = info.get("zero_shot_prompts")
    if prompts:  # a merged class is described by all its old classes' prompts (prompt ensembling)
        merged: dict[str, list[str]] = {n: [] for n in new_names}
        for old in names:
            merged[label_map.get(old, old)] += [q for q in prompts.get(old, []) if q not in merged[label_map.get(old, old)]]
        out["zero_shot_prompts"] = merged
    return out


def concat_splits(parts: list[SplitData], class_names: list[str] | None = None) -> SplitData:
    """One SplitData of several (same modalities); classes unified by name (`class_names` first),
    images expanded to common channels."""
    first = parts[0]
    for part in parts[1:]:
        if part.kinds != first.kinds:
            raise DataError(f"data.sources: modalities differ ({part.kinds} vs {first.kinds})")
    names = list(dict.fromkeys([*(class_names or []), *(n for part in parts for n in part.class_names)]))
    labels, own = [], len(names)  # unlabelled parts: classes of their own, after every named class
    for part in parts:
        if not part.labelled:
            labels.append(own + torch.arange(len(part)))
            own += len(part)
        elif part.class_names:
            lookup = torch.tensor([names.index(n) for n in part.class_names], dtype=torch.long)
            labels.append(lookup[part.labels])
        else:
            labels.append(part.labels)
    inputs = {}
    for k in first.inputs:
        tensors = [part.inputs[k] for part in parts]
        if tensors[0].ndim == 4:  # [N, C, H, W]: single-channel maps expanded to the others' channels
            c = max(t.shape[1] for t in tensors)
            tensors = [t.expand(-1, c, -1, -1) if t.shape[1] == 1 else t for t in tensors]
        inputs[k] = torch.cat(tensors)
    stats = ReadStats(n_ok=sum(p.stats.n_ok for p in parts), n_bad=sum(p.stats.n_bad for p in parts))
    offsets = np.cumsum([0, *(len(p) for p in parts)])
    variants = {}
    for m in {m for p in parts for m in p.variants}:  # a part without variants of m: one per sample
        vals = [p.variants[m] if m in p.variants else (p.inputs[m], torch.arange(len(p))) for p in parts]
        variants[m] = (torch.cat([v for v, _ in vals]), torch.cat([o + int(k) for (_, o), k in zip(vals, offsets)]))
    return SplitData(
        inputs=inputs, labels=torch.cat(labels), keys=[k for p in parts for k in p.keys], kinds=first.kinds,
        class_names=names, captions={m: [c for p in parts for c in p.captions[m]] for m in first.captions},
        raw={m: [r for p in parts for r in p.raw[m]] for m in first.raw}, stats=stats,
        prep=first.prep.updated(channels=input_channels(inputs, first.kinds)),
        variants=variants,
        labelled=all(p.labelled for p in parts),
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
