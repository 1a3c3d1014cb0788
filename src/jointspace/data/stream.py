"""Streaming shards for data that does not fit in memory: split by node and worker, optional
resampling of shards, batches collated per batch (no per-sample tensor work), and exact
mid-epoch resume by counting the batches already consumed.

Order is a pure function of (seed, epoch, rank, world size, worker count): shards are shuffled by
(seed, epoch), rank r takes shards r, r+W, ..., worker w of that rank takes every n-th of those, and
each worker yields whole batches. With `resampled`, every (rank, worker) instead draws an endless
sequence of shards with replacement from its own (seed, epoch, rank, worker) generator, with
probabilities `shard_probs` (the `data.sources` weights, as webdataset's ResampledShards with
upsampling); the epoch is then as long as the caller takes batches. The
DataLoader takes batches from workers round-robin, so batch k of an epoch comes from worker
k mod n. To resume after k batches, DataLoader worker w plays the part of worker (w + k) mod n
(so the first batch comes from the right one) and skips that worker's first ceil((k - role) / n)
batches. Exact while the workers' shares have equal batch counts (as many shards per worker, of
equal size); otherwise the tail of the epoch may be ordered differently, never lost or repeated.
"""

from __future__ import annotations

import hashlib
import math
import signal
from collections.abc import Iterable, Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info

from jointspace.data.shards import ReadStats, iter_samples
from jointspace.errors import UsageError
from jointspace.kinds import Prep, to_inputs


def epoch_shards(urls: list[str], seed: int, epoch: int, rank: int = 0, world_size: int = 1) -> list[str]:
    """This rank's shards for an epoch: shuffled by (seed, epoch), then strided over ranks."""
    order = np.random.default_rng([seed, epoch]).permutation(len(urls))
    mine = [urls[i] for i in order][rank::world_size]
    if not mine:
        raise UsageError(f"{len(urls)} shards cannot feed {world_size} ranks: write more, smaller shards")
    return mine


def resampled_shards(urls: list[str], probs: list[float] | None, seed: int, epoch: int, rank: int = 0,
                     worker: int = 0) -> Iterator[str]:
    """Endless draw of shards with replacement, P(url i) = probs[i] (uniform when None); a pure function
    of (seed, epoch, rank, worker), so every worker of every rank reads its own sequence."""
    p = None if probs is None else np.asarray(probs, dtype=np.float64) / np.sum(probs)
    rng = np.random.default_rng([seed, epoch, rank, worker, 1])
    while True:
        for i in rng.choice(len(urls), size=len(urls), p=p):
            yield urls[i]


def shard_probabilities(sizes: list[int], weights: list[float], n_shards: list[int]) -> list[float]:
    """Per-shard draw probability so that source i gets weight_i x size_i of the samples (its shards
    taken as equally sized): the streaming counterpart of `data.sources.source_mass`."""
    per_shard = [w * n / k for w, n, k in zip(weights, sizes, n_shards, strict=True)]
    probs = [p for p, k in zip(per_shard, n_shards, strict=True) for _ in range(k)]
    total = sum(probs)
    return [p / total for p in probs]


class ShardStream(IterableDataset):
    """Yields collated batches {modality: tensor, "label", "key"} from a rank's share of the shards."""

    def __init__(self, urls: list[str], kinds: dict[str, str], batch_size: int, seed: int = 0, epoch: int = 0,
                 rank: int = 0, world_size: int = 1, resampled: bool = False, skip_batches: int = 0,
                 prep: Prep | None = None, shuffle_buffer: int = 0, shard_probs: list[float] | None = None,
                 label_lookup: dict[str, np.ndarray | None] | None = None, decode=None, report_skips: bool = False):
        super().__init__()
        self.urls, self.kinds, self.batch_size = urls, kinds, batch_size
        self.shard_probs, self.label_lookup = shard_probs, label_lookup or {}
        self.seed, self.epoch, self.rank, self.world_size = seed, epoch, rank, world_size
        self.resampled, self.skip_batches, self.shuffle_buffer = resampled, skip_batches, shuffle_buffer
        self.prep = prep or Prep()  # the run's: sizes, tokenizers, channels (grey and colour sources mixed)
        self.stats = ReadStats()
        # (epoch, batches to skip) in shared memory: persistent DataLoader workers keep the copy of this object
        # they were started with, and read where the next epoch starts from here (`set_epoch`)
        self._place = torch.tensor([epoch, skip_batches], dtype=torch.long).share_memory_()
        self.decode = decode  # how a raw sample is read: a function, {url: function}, or None (jointspace's)
        # batches carry "_skipped" = (worker, samples skipped so far, first reasons), and each worker ends
        # with a batch of that alone: workers are other processes, so the counts travel with the data
        self.report_skips = report_skips

    def set_epoch(self, epoch: int, skip_batches: int = 0) -> None:
        """Where the next pass starts, in this process and in every (persistent) worker process."""
        self._place[0], self._place[1] = epoch, skip_batches
        self.epoch, self.skip_batches = epoch, skip_batches

    def _worker(self) -> tuple[int, int]:
        """(role, number of workers): the worker whose place in the epoch this DataLoader worker takes."""
        info = get_worker_info()
        wid, n = (info.id, info.num_workers) if info is not None else (0, 1)
        return (wid + self.skip_batches) % n, n

    def samples(self) -> Iterator[dict]:
        """Decoded samples of this rank and worker, in their deterministic order."""
        wid, n_workers = self._worker()
        if self.resampled:
            mine = resampled_shards(self.urls, self.shard_probs, self.seed, self.epoch, self.rank, wid)
        else:
            mine = epoch_shards(self.urls, self.seed, self.epoch, self.rank, self.world_size)[wid::n_workers]
        stream = self._read(mine)
        if self.shuffle_buffer <= 1:
            yield from stream
            return
        rng = np.random.default_rng([self.seed, self.epoch, self.rank, wid])
        buf: list[dict] = []
        for s in stream:
            buf.append(s)
            if len(buf) >= self.shuffle_buffer:
                yield buf.pop(int(rng.integers(len(buf))))
        while buf:
            yield buf.pop(int(rng.integers(len(buf))))

    def _read(self, shards: Iterable[str]) -> Iterator[dict]:
        """Samples of these shards in order; labels re-indexed by their shard's `label_lookup` (the
        classes of several `data.sources` unified by name)."""
        for url in shards:  # one at a time: a resampled stream of shards is endless
            lookup = self.label_lookup.get(url)
            decode = self.decode.get(url) if isinstance(self.decode, dict) else self.decode
            for sample in iter_samples([url], self.stats, list(self.kinds), decode):
                if lookup is not None:
                    sample["label"] = int(lookup[sample["label"]])
                yield sample

    def collate(self, samples: list[dict]) -> dict:
        """One batch of decoded samples -> tensors, converted per modality in one go by the run's Prep
        (grey images expanded to its channels when sources mix grey and colour)."""
        values = {m: [self._draw(s[m], s["key"]) for s in samples] for m in self.kinds}
        batch: dict = to_inputs(values, self.kinds, self.prep)
        batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        batch["key"] = [s["key"] for s in samples]
        if self.report_skips:
            batch["_skipped"] = (self._worker()[0], self.stats.n_bad, list(self.stats.errors[:3]))
        return batch

    def _draw(self, value, key: str):
        """One of a sample's several values (captions), the same for (seed, epoch, key) in any worker."""
        if not isinstance(value, list):
            return value
        h = hashlib.sha1(f"{self.seed}:{self.epoch}:{key}".encode()).digest()
        return value[int.from_bytes(h[:8], "big") % len(value)]

    def __iter__(self) -> Iterator[dict]:
        self.epoch, self.skip_batches = (int(v) for v in self._place.tolist())
        self.stats = ReadStats()  # counts of this pass
        wid, n_workers = self._worker()
        skip = max(0, math.ceil((self.skip_batches - wid) / n_workers))
        pending: list[dict] = []
        made = 0
        for sample in self.samples():
            pending.append(sample)
            if len(pending) == self.batch_size:
                if made >= skip:
                    yield self.collate(pending)
                made += 1
                pending = []
        if self.report_skips:
            yield {"_skipped": (wid, self.stats.n_bad, list(self.stats.errors[:3]))}


def stream_loader(stream: ShardStream, num_workers: int = 0, pin_memory: bool = False) -> DataLoader:
    """A DataLoader over whole batches (the stream batches itself); partial last batches are dropped.

    Its workers persist across passes: `stream.set_epoch(epoch, skip)` before each pass says where it
    starts (they are not started again each epoch, nor their imports and tokenizers built again). Batches
    are pinned for a CUDA device with `pin_memory`. Its workers leave preemption signals to the training
    process (`leave_signals_to_the_trainer`). It gets a generator of its own: the default one would
    draw from the global RNG, which would shift dropout masks after a mid-epoch resume.
    """
    gen = torch.Generator().manual_seed(stream.seed * 100_003 + stream.epoch)
    return DataLoader(stream, batch_size=None, num_workers=num_workers, persistent_workers=num_workers > 0,
                      pin_memory=pin_memory, generator=gen, worker_init_fn=leave_signals_to_the_trainer)


def leave_signals_to_the_trainer(_worker_id: int) -> None:
    """A worker ignores the signals a cluster sends a whole job before it stops it (SIGTERM, SIGUSR1):
    the training process catches them, finishes its step, saves and then stops its workers itself."""
    for sig in (signal.SIGTERM, signal.SIGUSR1):
        signal.signal(sig, signal.SIG_IGN)
