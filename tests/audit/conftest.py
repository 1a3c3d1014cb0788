"""Audit tests reuse the index tests' tiny digits run (same on-disk cache, trained once per session) and plant
exact faults in a copy of the digits shards."""

from __future__ import annotations

import importlib.util
from pathlib import Path

import pytest

_spec = importlib.util.spec_from_file_location("_jointspace_index_fixtures_audit",
                                               Path(__file__).parents[1] / "index" / "conftest.py")
_fixtures = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_fixtures)
tiny_run = _fixtures.tiny_run
tiny_index = _fixtures.tiny_index


def read_split(root: Path, split: str) -> list[dict]:
    from jointspace.data.shards import ReadStats, iter_samples, split_urls

    return list(iter_samples(split_urls(root, split), ReadStats()))


@pytest.fixture(scope="session")
def faulty_digits(tmp_path_factory, digits_dir) -> Path:
    """The digits shards with train sample 0 copied within train (key dup-0) and train sample 1 copied into
    test (key leak-1)."""
    from jointspace.data.shards import read_info, write_dataset

    info = read_info(digits_dir)
    splits = {s: read_split(digits_dir, s) for s in info["splits"]}
    train = splits["train"]
    splits["train"] = [*train, {**train[0], "key": "dup-0"}]
    splits["test"] = [*splits["test"], {**train[1], "key": "leak-1"}]
    out = tmp_path_factory.mktemp("audit") / "faulty"
    write_dataset(out, splits, info["modalities"], info["class_names"])
    return out
