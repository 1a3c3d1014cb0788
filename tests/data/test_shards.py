import functools
import io
import json
import operator
import tarfile

import numpy as np
import pytest
import torch

from jointspace.data.dataset import epoch_batches, load_split
from jointspace.data.shards import DataError, ReadStats, iter_samples, split_urls, write_dataset
from jointspace.kinds import Prep

MODS = {"image": "image", "text": "text", "audio": "sequence", "lidar": "range"}


def _samples(n, seed=0):
    rng = np.random.default_rng(seed)
    for i in range(n):
        yield {
            "key": f"s{i:03d}",
            "image": rng.integers(0, 256, (6, 5, 3), dtype=np.uint8),
            "text": f"caption number {i}",
            "audio": rng.normal(size=(int(rng.integers(3, 9)), 4)).astype(np.float32),
            "lidar": rng.uniform(1, 20, (4, 8)).astype(np.float32),
            "label": i % 3,
            "meta": {"i": i},
        }


def test_round_trip_is_exact(tmp_path):
    root = tmp_path / "ds"
    info = write_dataset(root, {"train": _samples(23)}, MODS, ["a", "b", "c"], maxcount=10)
    assert info["splits"]["train"]["n_samples"] == 23
    assert len(split_urls(root, "train")) == 3
    stats = ReadStats()
    got = list(iter_samples(split_urls(root, "train"), stats))
    want = list(_samples(23))
    assert stats.n_ok == 23 and stats.n_bad == 0
    for g, w in zip(got, want):
        assert g["key"] == w["key"] and g["label"] == w["label"] and g["meta"] == w["meta"]
        assert g["text"] == w["text"]
        np.testing.assert_array_equal(g["image"], w["image"])
        np.testing.assert_array_equal(g["audio"], w["audio"])
        np.testing.assert_array_equal(g["lidar"], w["lidar"])
    split = load_split(root, "train", list(MODS), Prep(image_size=6, context_length=8, max_frames=10))
    assert split.inputs["image"].shape == (23, 3, 6, 6)
    assert split.inputs["audio"].shape == (23, 10, 4) and split.inputs["audio_len"][0] == len(want[0]["audio"])
    assert split.inputs["text"].shape == (23, 8) and split.inputs["lidar"].shape == (23, 1, 4, 8)
    assert split.labels.tolist() == [i % 3 for i in range(23)]
    assert split.captions["text"][5] == "caption number 5"


def _corrupt_one_sample(shard, key):
    """Rewrite a shard with the PNG of `key` replaced by garbage bytes."""
    with tarfile.open(shard) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    with tarfile.open(shard, "w") as tf:
        for m, data in members:
            if m.name == f"{key}.image.png":
                data = b"not a png at all"
                m.size = len(data)
            tf.addfile(m, io.BytesIO(data))


def test_corrupt_sample_is_skipped_and_counted(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, {"train": _samples(20)}, MODS, ["a", "b", "c"], maxcount=10)
    _corrupt_one_sample(split_urls(root, "train")[0], "s003")
    split = load_split(root, "train", list(MODS), max_bad_fraction=0.1)
    assert len(split) == 19 and "s003" not in split.keys
    assert split.stats.n_bad == 1 and "s003" in split.stats.errors[0]
    with pytest.raises(DataError, match=r"(?s)1 of 20 samples unreadable.*s003"):
        load_split(root, "train", list(MODS), max_bad_fraction=0.01)


def test_truncated_shard_is_skipped_and_counted(tmp_path):
    root = tmp_path / "ds"
    write_dataset(root, {"train": _samples(30)}, MODS, ["a", "b", "c"], maxcount=10)
    shard = split_urls(root, "train")[1]
    with open(shard, "r+b") as f:
        f.truncate(f.seek(0, 2) // 2)
    split = load_split(root, "train", list(MODS), max_bad_fraction=0.5)
    assert 20 <= len(split) < 30
    assert split.stats.n_missing == 30 - len(split)
    with pytest.raises(DataError, match="shard-000001.tar"):
        load_split(root, "train", list(MODS), max_bad_fraction=0.05)


def test_missing_folder_and_modality_are_named(tmp_path):
    with pytest.raises(DataError, match="dataset.json"):
        load_split(tmp_path, "train", ["image"])
    root = tmp_path / "ds"
    write_dataset(root, {"train": _samples(3)}, MODS, ["a", "b", "c"])
    with pytest.raises(DataError, match="depth"):
        load_split(root, "train", ["image", "depth"])
    assert json.loads((root / "dataset.json").read_text())["modalities"] == MODS


def test_epoch_batches_depend_only_on_seed_and_epoch():
    a = [b.tolist() for b in epoch_batches(50, 8, seed=3, epoch=2)]
    b = [b.tolist() for b in epoch_batches(50, 8, seed=3, epoch=2)]
    c = [b.tolist() for b in epoch_batches(50, 8, seed=3, epoch=3)]
    assert a == b and a != c and len(a) == 6 and all(len(x) == 8 for x in a)
    flat = torch.tensor(functools.reduce(operator.iadd, a, []))
    assert len(flat.unique()) == 48


def test_digits_splits_do_not_share_sources(digits_dir):
    from jointspace.data.shards import read_info

    info = read_info(digits_dir)
    assert info["class_names"][7] == "seven"
    seen = {}
    for split in ("train", "val", "test"):
        stats = ReadStats()
        metas = [s["meta"] for s in iter_samples(split_urls(digits_dir, split), stats)]
        seen[split] = ({m["image_index"] for m in metas}, {m["audio_index"] for m in metas})
        assert stats.n_bad == 0 and len(metas) == 60
    for s1, s2 in (("train", "val"), ("train", "test"), ("val", "test")):
        assert not seen[s1][0] & seen[s2][0] and not seen[s1][1] & seen[s2][1]


def test_digits_pairs_share_labels(digits_dir):
    stats = ReadStats()
    for s in iter_samples(split_urls(digits_dir, "val"), stats):
        from jointspace.data.builtin.digits import CLASS_NAMES

        assert CLASS_NAMES[s["label"]] in s["text"]
        assert s["image"].shape == (8, 8) and s["audio"].shape[1] == 13


def test_shard_members_carry_no_pax_headers(tmp_path):
    """Whole-second mtimes: a float one would give every member a pax header, read on every pass."""
    samples = [{"key": f"k{i}", "image": np.zeros((4, 4), dtype=np.uint8), "text": "t", "label": 0} for i in range(3)]
    write_dataset(tmp_path / "ds", {"train": samples}, {"image": "image", "text": "text"}, ["a"])
    with tarfile.open(split_urls(tmp_path / "ds", "train")[0]) as tar:
        members = tar.getmembers()
    assert len(members) == 3 * 3 and not any(m.pax_headers for m in members)
