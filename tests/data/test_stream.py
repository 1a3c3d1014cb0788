import numpy as np
import pytest

from jointspace.data.shards import split_urls, write_dataset
from jointspace.data.stream import ShardStream, epoch_shards, stream_loader

MODS = {"image": "image", "text": "text"}


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
        stream = ShardStream(shards, MODS, batch_size=4, seed=1, epoch=0, rank=rank, world_size=2, image_size=4)
        seen.append(_keys(stream_loader(stream, num_workers=2)))
    assert len(seen[0]) == len(seen[1]) == 48
    assert not set(seen[0]) & set(seen[1]) and len(set(seen[0]) | set(seen[1])) == 96
    again = _keys(stream_loader(ShardStream(shards, MODS, 4, seed=1, epoch=0, rank=0, world_size=2, image_size=4), 2))
    assert again == seen[0]
    other_epoch = _keys(stream_loader(ShardStream(shards, MODS, 4, seed=1, epoch=1, rank=0, world_size=2,
                                                  image_size=4), 2))
    assert other_epoch != seen[0]


@pytest.mark.parametrize("workers", [0, 2])
def test_mid_epoch_resume_skips_exactly_the_consumed_batches(shards, workers):
    def stream(skip):
        return ShardStream(shards, MODS, batch_size=4, seed=3, epoch=2, skip_batches=skip, image_size=4,
                           shuffle_buffer=10)

    full = [b["key"] for b in stream_loader(stream(0), workers)]
    resumed = [b["key"] for b in stream_loader(stream(7), workers)]
    assert len(full) == 24 and resumed == full[7:]


def test_batches_are_tensors(shards):
    batch = next(iter(stream_loader(ShardStream(shards, MODS, batch_size=6, image_size=8))))
    assert batch["image"].shape == (6, 1, 8, 8) and batch["text"].shape == (6, 16)
    assert batch["label"].dtype.is_floating_point is False and len(batch["key"]) == 6


def test_resampled_draws_with_replacement(shards):
    draws = [tuple(epoch_shards(shards, seed=0, epoch=e, resampled=True)) for e in range(5)]
    assert any(len(set(d)) < len(d) for d in draws)  # some shard drawn twice
    assert epoch_shards(shards, 0, 0, resampled=True) == epoch_shards(shards, 0, 0, resampled=True)
    with pytest.raises(ValueError, match="cannot feed"):
        epoch_shards(shards[:1], 0, 0, rank=1, world_size=2)
