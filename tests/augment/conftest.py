"""A tiny diffusion run on the tiny digits shards (8x8 images, 42k parameters, a few seconds)."""

from __future__ import annotations

import pytest


def tiny_augment_overrides(data_path, out_dir, name="diffusion", steps=12) -> list[str]:
    """Overrides that make `augment train` take about a second."""
    return [f"name={name}", f"output_dir={out_dir}", f"data.path={data_path}", "data.image_size=8",
            "model.channels=[8, 16]", "model.norm_groups=4", f"train.steps={steps}", "train.batch_size=16",
            "train.warmup_steps=2", "train.log_every=1", "train.checkpoint_every=4", "train.keep_checkpoints=5",
            "sample.steps=4", "sample.n_per_class=3"]


@pytest.fixture(scope="session")
def diffusion_run(digits_dir, tmp_path_factory):
    """A finished tiny `augment train` run folder."""
    from jointspace.diffusion.config import load_augment_config
    from jointspace.tasks.diffusion import train_diffusion

    out = tmp_path_factory.mktemp("augment")
    cfg = load_augment_config(None, tiny_augment_overrides(digits_dir, out))
    return train_diffusion(cfg, show_progress=False)


@pytest.fixture(autouse=True)
def one_thread():
    """These models are tiny: one thread is faster than two fighting a busy machine's other jobs."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
