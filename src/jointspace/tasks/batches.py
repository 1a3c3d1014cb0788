"""Where a training step's batch comes from: decoded-in-memory splits or streamed shards.

Both yield, for every step of an epoch, this rank's batch of input tensors (on the device), the positive
mask over the global batch (all ranks; with mined hard negatives, `data.hard_negatives`, widened by
each anchor's extra candidates: a `losses.extra.WithExtra`) and host (CPU) copies of this rank's token inputs, from which the
model decides shapes before the step (`JointModel.host_plan`); both can start an epoch after `skip`
steps for an exact mid-epoch resume. Nothing here waits for the device: host tensors go over pinned and
non-blocking (`to_device`), and the objective plans one step ahead (`one_ahead`).
"""

from __future__ import annotations

import sys
from collections.abc import Iterator

import torch
from torch.utils.data import DataLoader

from jointspace.collectives import gather_no_grad
from jointspace.config import RunConfig
from jointspace.data.csv_source import CsvSource
from jointspace.data.dataset import SplitData, recorded_range
from jointspace.data.hard_negatives import hard_negatives_of
from jointspace.data.shards import DataError, ReadStats, iter_samples
from jointspace.data.sources import TrainSampler, shards_arg, source_label_lookups, source_of
from jointspace.data.stream import ShardStream, shard_probabilities, stream_loader
from jointspace.engine.distributed import DistInfo, shard_batch
from jointspace.kinds import Prep, get_kind, input_channels, ready, to_inputs, with_role
from jointspace.losses import positive_mask
from jointspace.losses.extra import WithExtra
from jointspace.runs import config_prep

Step = tuple[dict[str, torch.Tensor], torch.Tensor | WithExtra | None, dict[str, torch.Tensor]]


def to_device(t: torch.Tensor, device: torch.device) -> torch.Tensor:
    """A host tensor on `device` without the host waiting: pinned, then copied non-blocking (a copy from
    pageable memory would wait for the device's queue). On the CPU: itself."""
    if device.type == "cpu" or t.device == device:
        return t
    if t.device.type == "cpu" and device.type == "cuda" and not t.is_pinned():
        t = t.pin_memory()
    return t.to(device, non_blocking=True)


def one_ahead(items: Iterator) -> Iterator:
    """The items of an iterator, each drawn one step before it is handed out: the host prepares step k+1
    while the device still runs step k (the engine does not wait for it)."""
    it = iter(items)
    ahead = next(it, _END)
    while ahead is not _END:
        current, ahead = ahead, next(it, _END)
        yield current


_END = object()


def host_tokens(batch: dict[str, torch.Tensor], kinds: dict[str, str]) -> dict[str, torch.Tensor]:
    """The token (integer) inputs of a host batch: what the model reads to decide shapes."""
    return {m: batch[m] for m in kinds if m in batch and not batch[m].is_floating_point()}


class InMemoryBatches:
    """Seeded index batches over a split held as tensors; the global batch is known on every rank."""

    def __init__(self, cfg: RunConfig, data: SplitData, dist_info: DistInfo, device: torch.device,
                 text_key: str | None):
        self.cfg, self.data, self.dist, self.device, self.text_key = cfg, data, dist_info, device, text_key
        self.sampler = TrainSampler.from_config(cfg.data, data)
        self.steps_per_epoch = self.sampler.n_samples // cfg.train.batch_size
        data.inputs = {k: v.to(device) for k, v in data.inputs.items()}
        data.variants = {k: (v.to(device), o.to(device)) for k, (v, o) in data.variants.items()}
        data.labels = data.labels.to(device)
        self.negatives = hard_negatives_of(cfg, data, text_key, dist_info.world_size)  # data.hard_negatives

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Step]:
        """(local batch, global positive mask, host token inputs) per step, from step `skip` on."""
        self.data.draw_variants(self.cfg.seed, epoch)  # one caption per sample this epoch
        if self.negatives is not None:
            self.negatives.draw(self.cfg.seed, epoch)  # n_per_anchor mined negatives per sample this epoch
        tokens = {m: t.cpu() for m, t in host_tokens(self.data.inputs, self.data.kinds).items()}  # once an epoch
        for k, idx in enumerate(self.sampler.batches(self.cfg.train.batch_size, self.cfg.seed, epoch)):
            if k < skip:
                continue
            local = shard_batch(idx, self.dist)
            on_device = to_device(idx, self.device)
            glob = {"label": self.data.labels[on_device]}  # the mask reads labels (and captions) only
            if self.cfg.loss.positives == "caption" and self.text_key:
                glob[self.text_key] = self.data.inputs[self.text_key][on_device]
            mine = on_device if local is idx else to_device(local, self.device)
            batch, mask = self.data.batch(mine), positive_mask(glob, self.cfg.loss.positives, self.text_key)
            if self.negatives is not None:  # extra candidates per anchor, and the mask widened by them
                batch, mask = self.negatives.extend(batch, mine, mask)
            yield batch, mask, {m: t[local] for m, t in tokens.items()}


class StreamedBatches:
    """Each rank streams its own shards; labels (and captions) are gathered for the global mask.

    The train split is `data.path`'s (or the foreign shards of `data.urls`), or the shards of every
    `data.sources` folder with their classes
    unified by name (as the in-memory path does) and, with `data.resampled`, drawn in proportion to
    weight x size. Modalities and image channels are read from the first sample of each source.
    """

    def __init__(self, cfg: RunConfig, dist_info: DistInfo, device: torch.device,
                 class_names: list[str] | None = None):
        d = cfg.data
        self.cfg, self.dist, self.device = cfg, dist_info, device
        self.skipped: dict[int, dict] = {}  # epoch -> {n_skipped, reasons} of streamed samples lost
        self._stream: tuple[ShardStream, DataLoader] | None = None
        sources = [shards_arg(s.path, d) for s in d.sources] or [source_of(d)]
        if any(isinstance(s, CsvSource) for s in sources):
            raise DataError("data.csv: CSV datasets are read into memory; set data.streaming: false")
        paths, infos = [str(s) for s in sources], [s.info for s in sources]
        stored = infos[0]["modalities"]
        self.kinds = {m: stored[m] for m in d.modalities if m in stored}
        for p, info in zip(paths, infos, strict=True):
            missing = [m for m in d.modalities if m not in info["modalities"]]
            if missing:
                raise DataError(f"{p}: modalities {missing} not in this dataset (has: {', '.join(info['modalities'])})")
            if {m: info["modalities"][m] for m in self.kinds} != self.kinds:
                raise DataError(f"data.sources: modalities differ ({info['modalities']} vs {stored})")
        self.text_key = with_role(self.kinds, "captions")
        per_source = [s.urls("train") for s in sources]
        self.urls = [u for urls in per_source for u in urls]
        sizes = [info["splits"]["train"]["n_samples"] for info in infos]
        if None in sizes and not d.samples_per_epoch:
            raise DataError(f"{d.urls}: the number of samples of these shards is unknown (not local files); "
                            "set data.samples_per_epoch")
        sizes = [n or 0 for n in sizes]
        self.decode = {u: src.layout.decode for src, urls in zip(sources, per_source, strict=True) for u in urls
                       if src.layout is not None} or None  # foreign shards: each read by its source's layout
        self.class_names, lookups = source_label_lookups(d, class_names)
        remap = d.label_map or d.sources
        self.label_lookup = ({u: lk for urls, lk in zip(per_source, lookups, strict=True) for u in urls}
                             if remap else None)
        weights = [s.weight for s in d.sources] or [1.0]
        self.shard_probs = shard_probabilities(sizes, weights, [len(u) for u in per_source])
        self.prep = self._prep(per_source, infos[0])
        self.local_batch = cfg.train.batch_size // dist_info.world_size
        if d.resampled:  # endless streams: every rank can fill as many batches as the epoch asks for
            n_samples = d.samples_per_epoch or sum(sizes)
            self.steps_per_epoch = n_samples // cfg.train.batch_size
        else:  # whole batches every rank can fill, even if its shards hold fewer samples than the average
            per_rank = sum(sizes) // dist_info.world_size
            self.steps_per_epoch = max(0, per_rank // self.local_batch - (1 if dist_info.enabled else 0))

    def _prep(self, per_source: list[list[str]], info: dict) -> Prep:
        """The config's Prep with input channels (the most over the first sample of every source) and
        max_range (the config's or dataset.json's; required for ranged kinds) filled in."""
        firsts = [next(iter_samples(urls[:1], ReadStats(), list(self.kinds), (self.decode or {}).get(urls[0])), None)
                  for urls in per_source]
        firsts = [s for s in firsts if s is not None]
        prep = recorded_range(config_prep(self.cfg), info, self.kinds, self.cfg.data.max_range)
        unfixed = [m for m, k in self.kinds.items() if get_kind(k).ranged and m not in prep.max_range]
        if unfixed:  # fitting on what streaming has seen so far would clamp what it has not
            raise DataError(f"data.streaming: {unfixed} need a fixed range scale: set data.max_range (metres) or "
                            "record max_range in dataset.json")
        values = {m: [s[m] for s in firsts] for m in self.kinds}
        return prep.updated(channels=input_channels(to_inputs(values, self.kinds, prep), self.kinds))

    def epoch(self, epoch: int, skip: int = 0) -> Iterator[Step]:
        """(local batch, global positive mask) per step, from step `skip` on."""
        stream, loader = self._loader(epoch)
        stream.set_epoch(epoch, skip)
        step, seen = skip, {}
        for batch in loader:
            if step >= self.steps_per_epoch:
                break
            worker, n_bad, reasons = batch.pop("_skipped")
            seen[int(worker)] = (int(n_bad), reasons)
            if not batch:  # a worker's end-of-stream marker
                continue
            host = host_tokens(batch, self.kinds)
            batch = ready({k: to_device(v, self.device) for k, v in batch.items() if torch.is_tensor(v)}, self.kinds)
            glob = {"label": gather_no_grad(batch["label"])}
            if self.cfg.loss.positives == "caption" and self.text_key:
                glob[self.text_key] = gather_no_grad(batch[self.text_key])
            yield batch, positive_mask(glob, self.cfg.loss.positives, self.text_key), host
            step += 1
        self._said_skipped(epoch, seen)

    def _loader(self, epoch: int) -> tuple[ShardStream, DataLoader]:
        """The run's stream and its DataLoader, made at the first epoch: its workers serve every epoch."""
        if self._stream is None:
            d = self.cfg.data
            stream = ShardStream(self.urls, self.kinds, self.local_batch, self.cfg.seed, epoch, self.dist.rank,
                                 self.dist.world_size, d.resampled, shuffle_buffer=d.shuffle_buffer,
                                 shard_probs=self.shard_probs, label_lookup=self.label_lookup, prep=self.prep,
                                 decode=self.decode, report_skips=True)
            self._stream = (stream, stream_loader(stream, d.num_workers, pin_memory=self.device.type == "cuda"))
        return self._stream

    def _said_skipped(self, epoch: int, seen: dict) -> None:
        """One warning line per epoch that lost samples (this rank's workers together); kept for run.json."""
        n = sum(c for c, _ in seen.values())
        if not n:
            return
        reasons = [r for _, rs in seen.values() for r in rs][:3]
        self.skipped[epoch] = {"n_skipped": n, "reasons": reasons}
        print(f"warning: streamed train epoch {epoch + 1} (rank {self.dist.rank}): skipped {n} unreadable samples; "
              f"first: {'; '.join(reasons)}", file=sys.stderr)
