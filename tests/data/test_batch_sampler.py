"""data.batch_sampler: no_duplicates, against sentence-transformers' own NoDuplicatesBatchSampler and on
the digits captions (equal captions never share a batch; every sample once per epoch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from jointspace.data.batch_sampler import duplicate_values, no_duplicate_batches
from jointspace.data.dataset import epoch_batches, load_split
from jointspace.data.sources import TrainSampler
from jointspace.errors import UsageError


def _their_batches(caps, seed, epoch):
    import datasets  # the dev extra installs both: the reference must run, not skip
    from sentence_transformers import sampler
    ds = datasets.Dataset.from_dict({"key": [f"k{i}" for i in range(len(caps))], "caption": caps})
    theirs = sampler.NoDuplicatesBatchSampler(ds, batch_size=8, drop_last=True, generator=torch.Generator(),
                                              seed=seed * 100_003)
    theirs.set_epoch(epoch)  # the same permutation: their seed + epoch is ours
    return list(theirs)


def _values(caps):
    _, cid = np.unique(caps, return_inverse=True)
    return np.stack([np.arange(len(caps)), cid + len(caps)], axis=1)


@pytest.mark.parametrize("seed,epoch", [(1, 0), (2, 0), (3, 1)])
def test_a_pass_that_fills_the_epoch_gives_sentence_transformers_batches(seed, epoch):
    caps = [f"c{int(x)}" for x in np.random.default_rng(seed).integers(0, 24, size=48)]  # many duplicates
    theirs = _their_batches(caps, seed, epoch)
    assert sorted(i for b in theirs for i in b) == list(range(48))  # their one pass filled the epoch
    assert [b.tolist() for b in no_duplicate_batches(_values(caps), 8, seed, epoch, 6)] == theirs


@pytest.mark.parametrize("seed,epoch", [(1, 1), (2, 1), (3, 0)])
def test_where_their_pass_falls_short_every_sample_still_comes_once(seed, epoch):
    caps = [f"c{int(x)}" for x in np.random.default_rng(seed).integers(0, 24, size=48)]
    theirs = _their_batches(caps, seed, epoch)
    assert len({i for b in theirs for i in b}) < 48  # they resample: some samples twice, some never
    ours = [b.tolist() for b in no_duplicate_batches(_values(caps), 8, seed, epoch, 6)]
    assert sorted(i for b in ours for i in b) == list(range(48))
    assert all(len({caps[i] for i in b}) == 8 for b in ours)


def test_digits_batches_hold_no_equal_captions_and_cover_every_sample_once(digits_dir):
    data = load_split(digits_dir, "train", ["image", "text"])
    assert len(set(data.captions["text"])) < len(data)  # the digits captions do repeat
    sampler = TrainSampler(len(data), [len(data)], [1.0], duplicates=lambda: duplicate_values(data))
    for epoch in range(3):
        batches = [b.tolist() for b in sampler.batches(6, 0, epoch)]
        assert len(batches) == len(data) // 6
        for b in batches:
            assert len({data.captions["text"][i] for i in b}) == len(b) == 6
        flat = [i for b in batches for i in b]
        assert sorted(flat) == list(range(len(data)))  # 60 = 10 x 6: every sample exactly once
        assert [b.tolist() for b in sampler.batches(6, 0, epoch)] == batches  # a pure function of (seed, epoch)


def test_distinct_values_give_the_random_samplers_batches():
    values = np.stack([np.arange(40), np.arange(40) + 40], axis=1)
    ours = [b.tolist() for b in no_duplicate_batches(values, 8, 5, 2, 5)]
    assert ours == [b.tolist() for b in epoch_batches(40, 8, 5, 2)]


def test_streaming_refuses_no_duplicates(tiny_cfg):
    with pytest.raises(UsageError, match="no_duplicates needs the train split in memory"):
        tiny_cfg("data.batch_sampler=no_duplicates", "data.streaming=true")
