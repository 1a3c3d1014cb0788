"""Diffusion training: the loss falls, checkpoints resume exactly, a non-finite loss keeps the last good one."""

import json

import pytest
import torch
from safetensors.torch import load_file

from jointspace.diffusion.config import load_augment_config
from jointspace.tasks import diffusion as aug_train
from jointspace.tasks.contrastive import NonFiniteLossError
from jointspace.tasks.diffusion import DiffusionInfo, read_losses, train_diffusion
from jointspace.tasks.registry import task_info

from .conftest import tiny_augment_overrides


def test_run_folder_and_loss_decreases(diffusion_run):
    losses = read_losses(diffusion_run)
    assert len(losses) == 12
    assert sum(losses[-4:]) / 4 < sum(losses[:4]) / 4
    info = json.loads((diffusion_run / "run.json").read_text())
    assert info["task"] == "diffusion" and info["null_class"] == 10 and info["unet"]["num_class_embeds"] == 11
    typed = task_info(diffusion_run)  # the same run.json through the task's own RunInfo subclass
    assert isinstance(typed, DiffusionInfo) and typed.null_class == 10 and typed.to_json() == info
    assert (diffusion_run / "model.safetensors").exists() and (diffusion_run / "done.json").exists()
    names = json.loads((diffusion_run / "checkpoints" / "latest.json").read_text())["name"]
    assert names == "step_0000012"


def _interrupt_at(monkeypatch, call: int, value=None):
    """Make the `call`-th training loss raise KeyboardInterrupt (value None) or return `value`."""
    real, calls = aug_train.diffusion_loss, {"n": 0}

    def fake(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == call:
            if value is None:
                raise KeyboardInterrupt
            return torch.tensor(value, requires_grad=True)
        return real(*args, **kwargs)

    monkeypatch.setattr(aug_train, "diffusion_loss", fake)


def test_resume_continues_exactly(digits_dir, tmp_path, monkeypatch):
    full = train_diffusion(load_augment_config(None, tiny_augment_overrides(digits_dir, tmp_path, "full", 8)),
                           show_progress=False)
    cfg = load_augment_config(None, tiny_augment_overrides(digits_dir, tmp_path, "cut", 8))
    with monkeypatch.context() as m:
        _interrupt_at(m, 6)
        with pytest.raises(KeyboardInterrupt):
            train_diffusion(cfg, show_progress=False)
    assert not (tmp_path / "cut" / "model.safetensors").exists()
    with pytest.raises(FileExistsError, match="--resume"):
        train_diffusion(cfg, show_progress=False)
    train_diffusion(cfg, resume=True, show_progress=False)
    a, b = load_file(str(full / "model.safetensors")), load_file(str(tmp_path / "cut" / "model.safetensors"))
    assert all(torch.allclose(a[k], b[k], atol=1e-6) for k in a)
    assert read_losses(full)[-3:] == pytest.approx(read_losses(tmp_path / "cut")[-3:], abs=1e-6)


def test_nan_loss_stops_with_last_good_checkpoint(digits_dir, tmp_path, monkeypatch):
    cfg = load_augment_config(None, tiny_augment_overrides(digits_dir, tmp_path, "nan", 8))
    _interrupt_at(monkeypatch, 6, float("nan"))
    with pytest.raises(NonFiniteLossError, match=r"step 6; last good checkpoint: .*step_0000004"):
        train_diffusion(cfg, show_progress=False)
    ckpts = tmp_path / "nan" / "checkpoints"
    assert json.loads((ckpts / "latest.json").read_text())["name"] == "step_0000004"
    assert not (tmp_path / "nan" / "model.safetensors").exists()
