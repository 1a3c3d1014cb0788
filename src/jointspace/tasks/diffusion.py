"""The diffusion task (`task: diffusion`, also `augment train`): denoising (epsilon-prediction) training of a class-conditional UNet with label dropout.

The randomness of step s (noise, timesteps, dropped labels, flips) comes from a generator seeded by
(seed, s) and the batch order from (seed, epoch), so a run resumed from any checkpoint continues
exactly. A non-finite loss stops the run; the last good checkpoint stays what `latest.json` names.
"""

from __future__ import annotations

import copy
import itertools
import time
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from pydantic import Field
from torch import nn

from jointspace.data.dataset import epoch_batches
from jointspace.diffusion.config import AugmentConfig, save_augment_config
from jointspace.diffusion.model import build_unet, load_images, scheduler_config, unet_kwargs
from jointspace.engine import Objective, Plan, StepContext, fit
from jointspace.engine.checkpoint import save_weights
from jointspace.engine.optim import build_optimizer, warmup_cosine
from jointspace.engine.tracking import Tracker
from jointspace.errors import require
from jointspace.run_dir import WEIGHTS, RunDir, RunInfo, write_run_info
from jointspace.runs import resolve_device
from jointspace.tasks.common import done_line, write_done
from jointspace.tasks.lifecycle import fresh_or_resumed
from jointspace.tasks.registry import Task


class DiffusionInfo(RunInfo):
    """A diffusion run's run.json: the UNet's and the noise schedule's settings, the class-free label
    (`null_class`), the images' size and channels, and how many training images each class had."""

    null_class: int | None = None
    image_size: int | None = None
    channels: int | None = None
    unet: dict[str, Any] = Field(default_factory=dict)
    scheduler: dict[str, Any] = Field(default_factory=dict)
    train_class_counts: list[int] = Field(default_factory=list)


class DiffusionState(nn.Module):
    """What a checkpoint holds: the trained UNet and its exponential moving average."""

    def __init__(self, unet: nn.Module):
        super().__init__()
        self.unet = unet
        self.ema = copy.deepcopy(unet).requires_grad_(False)

    @torch.no_grad()
    def update_ema(self, decay: float, step: int) -> None:
        """ema <- decay' * ema + (1 - decay') * unet, with decay' warming up from 0.1 (step 0) to `decay`."""
        d = min(decay, (1 + step) / (10 + step))
        for e, p in zip(self.ema.parameters(), self.unet.parameters(), strict=True):
            e.lerp_(p, 1.0 - d)
        for e, b in zip(self.ema.buffers(), self.unet.buffers(), strict=True):
            e.copy_(b)

    def final(self, decay: float) -> nn.Module:
        """The weights to sample from: the EMA when enabled."""
        return self.ema if decay > 0 else self.unet


def diffusion_loss(unet: nn.Module, noise_sched, images: torch.Tensor, labels: torch.Tensor,
                   gen: torch.Generator, null_class: int, label_dropout: float, hflip: bool) -> torch.Tensor:
    """MSE between the true and predicted noise at random timesteps; a share of labels become `null_class`."""
    n = len(images)
    if hflip:
        flip = torch.rand(n, generator=gen) < 0.5
        images = torch.where(flip[:, None, None, None], images.flip(-1), images)
    noise = torch.randn(images.shape, generator=gen)
    t = torch.randint(0, noise_sched.config.num_train_timesteps, (n,), generator=gen)
    drop = torch.rand(n, generator=gen) < label_dropout
    labels = torch.where(drop, torch.full_like(labels, null_class), labels)
    device = next(unet.parameters()).device
    noisy = noise_sched.add_noise(images, noise, t)
    pred = unet(noisy.to(device), t.to(device), class_labels=labels.to(device)).sample
    return F.mse_loss(pred.float(), noise.to(device))


class DiffusionObjective(Objective):
    """Epsilon-prediction MSE; the noise of step s from a generator seeded by (seed, s); an EMA of the UNet."""

    def __init__(self, cfg: AugmentConfig, state: DiffusionState, noise_sched, images: torch.Tensor,
                 labels: torch.Tensor, null_class: int):
        self.cfg, self.module, self.noise_sched = cfg, state, noise_sched
        self.images, self.labels, self.null_class = images, labels, null_class
        self.batch_size = min(cfg.train.batch_size, len(labels))

    def batches(self, epoch: int, skip: int):
        return itertools.islice(epoch_batches(len(self.labels), self.batch_size, self.cfg.seed, epoch), skip, None)

    def loss(self, idx: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        tc = self.cfg.train
        gen = torch.Generator().manual_seed(self.cfg.seed * 1_000_003 + ctx.step)
        return diffusion_loss(self.module.unet, self.noise_sched, self.images[idx], self.labels[idx], gen,
                              self.null_class, tc.label_dropout, tc.hflip), {}

    def clip_parameters(self):
        return self.module.unet.parameters()

    def after_step(self, step: int) -> None:
        self.module.update_ema(self.cfg.train.ema_decay, step)


def _run_info(cfg: AugmentConfig, class_names: list[str], n_classes: int, images: torch.Tensor, kwargs: dict,
              sched_cfg: dict, labels: torch.Tensor) -> DiffusionInfo:
    return DiffusionInfo(task="diffusion", class_names=class_names, null_class=n_classes,
                   image_size=cfg.data.image_size, channels=int(images.shape[1]), unet=kwargs,
                   scheduler=sched_cfg, data_path=cfg.data.path,
                   train_class_counts=torch.bincount(labels, minlength=n_classes).tolist())


@fresh_or_resumed
def train_diffusion(cfg: AugmentConfig, resume: bool = False, overwrite: bool = False,
                    show_progress: bool = True) -> Path:
    """Train the configured diffusion model on the images of `data.path`; returns the run folder.

    The folder gets config.yaml, run.json (UNet + schedule + class names), metrics.jsonl,
    checkpoints/, model.safetensors (the EMA weights) and, last, done.json."""
    DDPMScheduler = require("augment", "diffusers", "a diffusion run").DDPMScheduler  # heavy: imported here

    t_start, tc = time.time(), cfg.train
    run_dir = RunDir(cfg.run_dir).create(resume, overwrite).path
    if tc.num_threads:
        torch.set_num_threads(tc.num_threads)
    device = resolve_device(tc.device)
    data = load_images(cfg.data)
    images, labels = data.inputs[cfg.data.modality], data.labels
    class_names = data.class_names or [str(i) for i in range(int(labels.max()) + 1)]
    n_classes = max(len(class_names), int(labels.max()) + 1)
    kwargs = unet_kwargs(cfg.model, cfg.data.image_size, int(images.shape[1]), n_classes)
    sched_cfg = scheduler_config(tc.timesteps, tc.beta_schedule)
    torch.manual_seed(cfg.seed)
    state = DiffusionState(build_unet(kwargs)).to(device)
    obj = DiffusionObjective(cfg, state, DDPMScheduler.from_config(sched_cfg), images, labels, n_classes)
    optimizer = build_optimizer(state.unet, tc)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, tc.warmup_steps, tc.steps))
    if not resume:
        save_augment_config(cfg, RunDir(run_dir).config)
        write_run_info(run_dir, _run_info(cfg, class_names, n_classes, images, kwargs, sched_cfg, labels))
    plan = Plan(steps_per_epoch=len(labels) // obj.batch_size, total_steps=tc.steps, log_every=tc.log_every,
                checkpoint_every=None, checkpoint_every_steps=tc.checkpoint_every,
                keep_checkpoints=tc.keep_checkpoints, grad_clip=tc.grad_clip)
    n_params = sum(p.numel() for p in state.unet.parameters())
    print(f"diffusion run {run_dir}: {len(labels)} images {tuple(images.shape[1:])}, {n_classes} classes, "
          f"{n_params:,} parameters, device {device}, to step {tc.steps}")
    tracker = Tracker(run_dir, cfg.tracker, cfg.model_dump(mode="json"), cfg.name)
    result = fit(obj, optimizer, lr_sched, plan, run_dir, tracker, device, resume, show_progress)
    save_weights(state.final(tc.ema_decay).state_dict(), RunDir(run_dir).weights, RunDir(run_dir).checkpoints)
    write_done(run_dir, {"task": "diffusion", "name": cfg.name, "steps": tc.steps, "final_loss": result.loss,
                         "n_params": n_params, "train_seconds": round(result.train_seconds, 1),
                         "wall_seconds": round(time.time() - t_start, 1)})
    return run_dir


def read_losses(run_dir: Path) -> list[float]:
    """Logged training losses of a diffusion run, in order."""
    return [r["loss"] for r in RunDir(run_dir).read_metrics()]


TASK = Task("diffusion", AugmentConfig, train_diffusion, done_line,
            results=f"{WEIGHTS}: sample it with `jointspace augment sample`",
            measure="none: a diffusion run reports its final loss", info=DiffusionInfo)
