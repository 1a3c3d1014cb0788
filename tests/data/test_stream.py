import numpy as np
import pytest
import torch

from jointspace.data.shards import split_urls, write_dataset
from jointspace.data.stream import (
    ShardStream,
    epoch_shards,
    resampled_shards,
    shard_probabilities,
    stream_loader,
)
from jointspace.kinds import Prep

MODS = {"image": "image", "text": "text"}
P4 = Prep(image_size=4)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    root = tmp_path_factory.mktemp("stream") / "ds"
    rng = np.random.default_rng(0)
    samples = ({"key": f"k{i:03d}", "image": rng.integers(0, 255, (4, 4), dtype=np.uint8),
                "text": f"item {i}", "label": i % 5} for i in range(96))
    write_dataset(root, {"train": samples}, MODS, [str(c) for c in range(5)], maxcount=8)
    return split_urls(root, "train")  # 12 shards of 8


def _keys(loader):
    return [k for batch in loader for k in batch["key"]]


def test_ranks_and_workers_split_the_epoch_exactly(shards):
    seen = []
    for rank in range(2):
        stream = ShardStream(shards, MODS, batch_size=4, seed=1, epoch=0, rank=rank, world_size=2, prep=P4)
        seen.append(_keys(stream_loader(stream, num_workers=2)))
    assert len(seen[0]) == len(seen[1]) == 48
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 96
    again = _keys(stream_loader(ShardStream(shards, MODS, 4, seed=1, epoch=0, rank=0, world_size=2, prep=P4), 2))
    assert again == seen[0]
    other_epoch = _keys(stream_loader(ShardStream(shards, MODS, 4, seed=1, epoch=1, rank=0, world_size=2,
                                                  prep=P4), 2))
    assert other_epoch != seen[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_skips_exactly_the_consumed_batches(shards, workers):
    def stream(skip):
        return ShardStream(shards, MODS, batch_size=4, seed=3, epoch=2, skip_batches=skip, prep=P4,
                           shuffle_buffer=10)

    full = [b["key"] for b in stream_loader(stream(0), workers)]
    resumed = [b["key"] for b in stream_loader(stream(7), workers)]
    assert len(full) == 24 and resumed == full[7:]


def test_batches_are_tensors(shards):
    batch = next(iter(stream_loader(ShardStream(shards, MODS, batch_size=6, prep=Prep(image_size=8)))))
    assert batch["image"].shape == (6, 1, 8, 8) and batch["text"].shape == (6, 16)
    assert batch["label"].dtype.is_floating_point is False and len(batch["key"]) == 6


def test_resampled_shards_draw_with_replacement_by_probability(shards):
    def draw(n, **kw):
        gen = resampled_shards(shards, **{"probs": None, "seed": 0, "epoch": 0, **kw})
        return [next(gen) for _ in range(n)]

    first = draw(len(shards))
    assert len(set(first)) < len(first)  # some shard drawn twice within one pass
    assert draw(50) == draw(50)  # a pure function of (seed, epoch, rank, worker)
    assert draw(50) != draw(50, worker=1) and draw(50) != draw(50, rank=1) and draw(50) != draw(50, epoch=1)
    probs = [0.0] * len(shards)
    probs[0], probs[1] = 3.0, 1.0  # unnormalised weights are fine
    picks = draw(4000, probs=probs)
    assert set(picks) == {shards[0], shards[1]}
    assert abs(picks.count(shards[0]) / 4000 - 0.75) < 0.03
    with pytest.raises(ValueError, match="cannot feed"):
        epoch_shards(shards[:1], 0, 0, rank=1, world_size=2)


def test_shard_probabilities_follow_weight_times_size():
    # source 0: 100 samples in 4 shards, weight 1; source 1: 50 samples in 1 shard, weight 4
    probs = shard_probabilities([100, 50], [1.0, 4.0], [4, 1])
    assert len(probs) == 5 and abs(sum(probs) - 1) < 1e-12
    assert abs(sum(probs[:4]) - 1 / 3) < 1e-12 and abs(probs[4] - 2 / 3) < 1e-12


def test_resampled_stream_resumes_exactly(shards):
    def stream(skip):
        return ShardStream(shards, MODS, batch_size=4, seed=3, epoch=1, resampled=True, skip_batches=skip,
                           prep=P4, shuffle_buffer=10)

    def take(loader, n):
        it = iter(loader)
        return [next(it)["key"] for _ in range(n)]

    for workers in (0, 2):
        full = take(stream_loader(stream(0), workers), 30)  # longer than one pass over the shards: endless
        assert take(stream_loader(stream(7), workers), 23) == full[7:]


def test_label_lookup_reindexes_by_shard_and_expands_grey(shards):
    lookup = {u: np.array([4, 3, 2, 1, 0]) for u in shards[:6]}  # the other shards keep their labels
    plain = ShardStream(shards, MODS, batch_size=96, prep=P4)
    mapped = ShardStream(shards, MODS, batch_size=96, prep=Prep(image_size=4, channels={"image": 3}), label_lookup=lookup)
    a, b = next(iter(stream_loader(plain))), next(iter(stream_loader(mapped)))
    assert a["key"] == b["key"]
    first_half = {f"k{i:03d}" for i in range(48)}  # shards are written in key order, 8 per shard
    for key, la, lb in zip(a["key"], a["label"].tolist(), b["label"].tolist(), strict=True):
        assert lb == (4 - la if key in first_half else la)
    assert a["image"].shape[1] == 1 and b["image"].shape[1] == 3
    assert torch.equal(b["image"][:, 2], a["image"][:, 0])


@pytest.mark.parametrize("workers", [0, 2])
def test_one_loader_serves_every_epoch_with_the_same_workers(shards, workers):
    """set_epoch reaches persistent workers (shared memory): each pass is what a fresh loader of that
    epoch (and skip) gives, and the worker processes are the same ones."""
    stream = ShardStream(shards, MODS, batch_size=4, seed=5, epoch=0, prep=P4)
    loader = stream_loader(stream, workers)
    passes, pids = [], []
    for epoch, skip in [(0, 0), (1, 0), (2, 5), (3, 0)]:
        stream.set_epoch(epoch, skip)
        passes.append(_keys(loader))
        pids.append([w.pid for w in getattr(loader._iterator, "_workers", [])])
    fresh = [_keys(stream_loader(ShardStream(shards, MODS, 4, seed=5, epoch=e, skip_batches=k, prep=P4), workers))
             for e, k in [(0, 0), (1, 0), (2, 5), (3, 0)]]
    assert passes == fresh and len(passes[1]) == 96 and len(passes[2]) == 96 - 5 * 4
    assert passes[0] != passes[1]
    assert all(p == pids[0] for p in pids) and len(pids[0]) == workers
