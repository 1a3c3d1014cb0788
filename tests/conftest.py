"""Shared fixtures: tiny digits shards and tiny run configs (CPU, seconds)."""

from __future__ import annotations

import fcntl
import os

import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")

import torch

torch.set_num_threads(2)


@pytest.fixture
def multiprocess_lock(tmp_path_factory):
    """Held while a test runs several processes of its own (torchrun ranks, sweep workers): under
    `make test`'s two pytest workers, two such tests at once on 2 cores starve each other's ranks into
    timing races (a worker past its step before the test's signal, a gloo rank aborting). The lock file is
    in the folder the pytest workers share."""
    with open(tmp_path_factory.getbasetemp().parent / "multiprocess.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


@pytest.fixture(scope="session")
def digits_dir(tmp_path_factory):
    """A small digits shard folder (60 samples per split)."""
    from jointspace.data.builtin import synthesize

    root = tmp_path_factory.mktemp("shards") / "digits"
    synthesize("digits", root, seed=0, n=180, maxcount=25)
    return root


def tiny_overrides(data_path, out_dir, name="tiny", epochs=2) -> list[str]:
    """Overrides that make the digits config train in a couple of seconds."""
    return [
        f"name={name}", f"output_dir={out_dir}", f"data.path={data_path}", "data.synth=null",
        f"train.epochs={epochs}", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=1",
        "model.embed_dim=16",
        "model.towers.image.params.channels=[8, 16]",
        "model.towers.text.params.width=16", "model.towers.text.params.layers=1",
        "model.towers.audio.params.channels=[16, 16]",
        "tracker=none",
    ]


@pytest.fixture
def tiny_cfg(digits_dir, tmp_path):
    """Build a tiny RunConfig from the shipped digits config."""
    from jointspace.cli import builtin_config
    from jointspace.config import load_config

    def make(*extra: str, name: str = "tiny", epochs: int = 2):
        return load_config(builtin_config("digits"), tiny_overrides(digits_dir, tmp_path / "runs", name, epochs) + list(extra))

    return make


@pytest.fixture(scope="session")
def shapes_dir(tmp_path_factory):
    """84 procedural scenes: 59 train / 13 val / 13 test (about 1 s to render)."""
    from jointspace.data.builtin import synthesize

    root = tmp_path_factory.mktemp("shards") / "shapes"
    synthesize("shapes", root, seed=0, n=84, maxcount=100)
    return root
