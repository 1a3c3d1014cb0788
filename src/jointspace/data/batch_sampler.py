"""`data.batch_sampler: no_duplicates`: batches without two samples of one key or one caption, as
sentence-transformers' NoDuplicatesBatchSampler makes them (duplicates in a batch are false negatives of
each other under instance positives).

Each pass takes a seeded permutation (a pure function of seed and epoch: a resumed run sees the same
batches) and fills one batch at a time from the front of the remaining samples, deferring a sample whose
key or caption the batch holds already to a later batch, in order; a last batch it cannot fill is left
out (drop_last). Where the pass gives fewer batches than the epoch has steps (the samples left at its end
share captions), sentence-transformers reshuffles and draws the missing batches from all samples again;
here they take the samples left over first, each in the first missing batch it adds no duplicate to (or
exchanged with a sample of a full batch that fits there), and fill the slots still empty with samples of
the epoch's earlier batches: every sample is in the epoch once wherever its duplicates leave room, and
only the filling repeats. A data set with too few distinct
captions for the batch size is an error."""

from __future__ import annotations

from collections.abc import Iterator

import numpy as np
import torch

from jointspace.data.dataset import SplitData
from jointspace.data.shards import DataError
from jointspace.kinds import with_role


def duplicate_values(data: SplitData) -> np.ndarray:
    """[N, V] int ids of what must not repeat in a batch: each sample's key and, with a captions
    modality, its caption of this epoch (token ids: `inputs` after `draw_variants`); ids of different
    columns never collide."""
    _, keys = np.unique(np.asarray(data.keys, dtype=object).astype(str), return_inverse=True)
    columns = [keys.astype(np.int64)]
    text = with_role(data.kinds, "captions")
    if text is not None and text in data.inputs:
        _, captions = torch.unique(data.inputs[text].cpu(), dim=0, return_inverse=True)
        columns.append(captions.numpy().astype(np.int64) + len(data.keys))
    return np.stack(columns, axis=1)


def one_pass(order: list[int], values: list[tuple[int, ...]], batch_size: int) -> tuple[list[list[int]], list[int]]:
    """The full batches of `order` without repeated values (sentence-transformers' pass: deferred samples
    keep their order), and the samples left over."""
    batches, remaining = [], order
    while len(remaining) >= batch_size:
        batch, seen, deferred = [], set(), []
        for pos, i in enumerate(remaining):
            if len(batch) == batch_size:
                deferred.extend(remaining[pos:])
                break
            if seen.isdisjoint(values[i]):
                batch.append(i)
                seen.update(values[i])
            else:
                deferred.append(i)
        if len(batch) < batch_size:
            break
        batches.append(batch)
        remaining = deferred
    return batches, remaining


class Batches:
    """Batches being filled, each with the set of its samples' values (a batch never holds one twice, so
    the values of a batch less sample j are its set less j's values): every check is O(values of a sample)."""

    def __init__(self, batches: list[list[int]], values: list[tuple[int, ...]]):
        self.batches, self.values = batches, values
        self.seen = [{v for i in b for v in values[i]} for b in batches]

    def fits(self, k: int, i: int, but: int | None = None) -> bool:
        """Sample i adds no repeated value to batch k (with sample `but` taken out of it)."""
        out = set(self.values[but]) if but is not None else set()
        return all(v not in self.seen[k] or v in out for v in self.values[i])

    def put(self, k: int, i: int, pos: int | None = None) -> None:
        """Sample i into batch k, appended or in place of the sample at `pos`."""
        if pos is None:
            self.batches[k].append(i)
        else:
            self.seen[k].difference_update(self.values[self.batches[k][pos]])
            self.batches[k][pos] = i
        self.seen[k].update(self.values[i])


def _place(i: int, missing: Batches, batch_size: int) -> bool:
    """Put sample i into the first batch with room where it adds no duplicate."""
    for k, batch in enumerate(missing.batches):
        if len(batch) < batch_size and missing.fits(k, i):
            missing.put(k, i)
            return True
    return False


def _swap_in(i: int, done: Batches, missing: Batches, batch_size: int) -> bool:
    """Put sample i into a full batch in place of one of its samples that moves to a missing batch (both
    without duplicates)."""
    for k, batch in enumerate(done.batches):
        for pos, j in enumerate(batch):
            if done.fits(k, i, but=j) and _place(j, missing, batch_size):
                done.put(k, i, pos)
                return True
    return False


def fill_missing(done: list[list[int]], leftover: list[int], values: list[tuple[int, ...]], batch_size: int,
                 n_missing: int) -> list[list[int]] | None:
    """The batches a pass could not fill: the samples it left over first (each into the first missing
    batch where it adds no duplicate, else into a full batch whose sample it displaces there), then
    samples of the epoch's earlier batches (repeats, in their order) where slots remain; None where even
    so a batch stays short. `done` (the full batches) may change by those exchanges."""
    full, missing = Batches(done, values), Batches([[] for _ in range(n_missing)], values)
    for i in leftover:
        if sum(map(len, missing.batches)) < batch_size * n_missing and not _place(i, missing, batch_size):
            _swap_in(i, full, missing, batch_size)
    for i in [i for b in done for i in b]:
        if all(len(b) == batch_size for b in missing.batches):
            break
        _place(i, missing, batch_size)
    return missing.batches if all(len(b) == batch_size for b in missing.batches) else None


def no_duplicate_batches(values: np.ndarray, batch_size: int, seed: int, epoch: int,
                         n_batches: int) -> Iterator[torch.Tensor]:
    """`n_batches` index batches of one epoch, none holding a value (`duplicate_values`) twice."""
    gen = torch.Generator().manual_seed(seed * 100_003 + epoch)
    rows = [tuple(v) for v in values.tolist()]
    batches, leftover = one_pass(torch.randperm(len(rows), generator=gen).tolist(), rows, batch_size)
    batches = batches[:n_batches]
    if len(batches) < n_batches:
        more = fill_missing(batches, leftover, rows, batch_size, n_batches - len(batches))
        if more is None:
            raise DataError(f"data.batch_sampler: no_duplicates: the train split has too few distinct captions / "
                            f"keys for batches of {batch_size}; lower train.batch_size")
        batches += more
    for batch in batches:
        yield torch.tensor(batch, dtype=torch.long)
