"""Fixtures for index and serve tests: a tiny trained digits run and an index built from it (cached on disk)."""

from __future__ import annotations

from pathlib import Path

import pytest

TINY = [
    "data.synth=null", "train.epochs=3", "train.batch_size=16", "train.warmup_steps=2", "train.log_every=5",
    "model.embed_dim=16", "model.towers.image.params.channels=[8, 16]", "model.towers.text.params.width=16",
    "model.towers.text.params.layers=1", "model.towers.audio.params.channels=[16, 16]", "tracker=none",
]


def train_tiny(base: Path, digits_dir: Path, name: str = "search") -> Path:
    """Train (once per pytest session) a tiny digits model; returns its run folder."""
    from jointspace.cli import builtin_config
    from jointspace.config import load_config
    from jointspace.tasks.contrastive import train

    run = base / "runs" / name
    if not (run / "model.safetensors").exists():
        overrides = [f"name={name}", f"output_dir={base / 'runs'}", f"data.path={digits_dir}", *TINY]
        train(load_config(builtin_config("digits"), overrides), overwrite=True)
    return run


def build_tiny(base: Path, run: Path, digits_dir: Path) -> Path:
    """Index every split and modality of the tiny digits shards (once per session)."""
    from jointspace.index.build import build_index

    out = base / "index" / "digits"
    if not (out / "meta.json").exists():
        build_index(run, digits_dir, out)
    return out


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory, digits_dir) -> Path:
    return train_tiny(tmp_path_factory.getbasetemp() / "search-fixtures", digits_dir)


@pytest.fixture(scope="session")
def tiny_index(tmp_path_factory, tiny_run, digits_dir) -> Path:
    return build_tiny(tmp_path_factory.getbasetemp() / "search-fixtures", tiny_run, digits_dir)


def build_tiny_milvus(base: Path, run: Path, digits_dir: Path) -> Path:
    """The same index in Milvus Lite (a file beside the folder), once per session."""
    from jointspace.index.build import build_index

    out = base / "index" / "digits-milvus"
    if not (out / "meta.json").exists():
        build_index(run, digits_dir, out, backend="milvus", uri=str(base / "index" / "digits.milvus.db"))
    return out


@pytest.fixture(scope="session")
def tiny_milvus_index(tmp_path_factory, tiny_run, digits_dir) -> Path:
    pytest.importorskip("milvus_lite")
    return build_tiny_milvus(tmp_path_factory.getbasetemp() / "search-fixtures", tiny_run, digits_dir)
