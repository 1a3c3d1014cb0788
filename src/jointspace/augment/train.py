"""`augment train`: denoising (epsilon-prediction) training of a class-conditional UNet with label dropout.

The randomness of step s (noise, timesteps, dropped labels, flips) comes from a generator seeded by
(seed, s) and the batch order from (seed, epoch), so a run resumed from any checkpoint continues
exactly. A non-finite loss stops the run; the last good checkpoint stays what `latest.json` names.
"""

from __future__ import annotations

import copy
import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from jointspace.augment.config import AugmentConfig, save_augment_config
from jointspace.augment.model import build_unet, load_images, scheduler_config, unet_kwargs
from jointspace.data.dataset import epoch_batches
from jointspace.runs import CONFIG, WEIGHTS, prepare_run_dir, resolve_device, write_run_info
from jointspace.train.checkpoint import latest_checkpoint, resume_latest, save_checkpoint, save_tensors
from jointspace.train.common import progress_bar, write_done
from jointspace.train.loop import NonFiniteLossError
from jointspace.train.optim import warmup_cosine
from jointspace.train.tracking import Tracker


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


def train_diffusion(cfg: AugmentConfig, resume: bool = False, overwrite: bool = False,
                    show_progress: bool = True) -> Path:
    """Train the configured diffusion model on the images of `data.path`; returns the run folder.

    The folder gets config.yaml, run.json (UNet + schedule + class names), metrics.jsonl,
    checkpoints/, model.safetensors (the EMA weights) and, last, done.json."""
    from diffusers import DDPMScheduler

    t_start = time.time()
    tc = cfg.train
    run_dir = prepare_run_dir(cfg.run_dir, resume, overwrite)
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
    noise_sched = DDPMScheduler.from_config(sched_cfg)
    optimizer = torch.optim.AdamW(state.unet.parameters(), lr=tc.lr, weight_decay=tc.weight_decay)
    lr_sched = torch.optim.lr_scheduler.LambdaLR(optimizer, lambda s: warmup_cosine(s, tc.warmup_steps, tc.steps))
    ckpt_dir = run_dir / "checkpoints"
    step = 0
    if resume:
        saved = resume_latest(ckpt_dir, state, optimizer, lr_sched)
        step = saved["step"]
    else:
        save_augment_config(cfg, run_dir / CONFIG)
        counts = torch.bincount(labels, minlength=n_classes).tolist()
        write_run_info(run_dir, {"task": "diffusion", "class_names": class_names, "null_class": n_classes,
                                 "image_size": cfg.data.image_size, "channels": int(images.shape[1]),
                                 "unet": kwargs, "scheduler": sched_cfg, "data_path": cfg.data.path,
                                 "train_class_counts": counts})
    tracker = Tracker(run_dir, "none")
    batch_size = min(tc.batch_size, len(labels))
    per_epoch = len(labels) // batch_size
    n_params = sum(p.numel() for p in state.unet.parameters())
    print(f"diffusion run {run_dir}: {len(labels)} images {tuple(images.shape[1:])}, {n_classes} classes, "
          f"{n_params:,} parameters, device {device}, from step {step} to {tc.steps}")

    def save(at: int) -> None:
        save_checkpoint(ckpt_dir, f"step_{at:07d}", state, optimizer,
                        {"step": at, "scheduler": lr_sched.state_dict()}, keep=tc.keep_checkpoints)

    t_train, loss_value = time.perf_counter(), float("nan")
    progress = progress_bar(show_progress)
    with progress:
        task = progress.add_task("train", total=tc.steps, completed=step, epoch=step // per_epoch + 1, loss=loss_value)
        while step < tc.steps:
            epoch, skip = divmod(step, per_epoch)
            for idx in list(epoch_batches(len(labels), batch_size, cfg.seed, epoch))[skip:]:
                gen = torch.Generator().manual_seed(cfg.seed * 1_000_003 + step)
                loss = diffusion_loss(state.unet, noise_sched, images[idx], labels[idx], gen, n_classes,
                                      tc.label_dropout, tc.hflip)
                if not torch.isfinite(loss):
                    latest = latest_checkpoint(ckpt_dir)
                    raise NonFiniteLossError(f"non-finite loss {float(loss.detach())} at step {step + 1}; last good "
                                             f"checkpoint: {latest or 'none yet'} (resume with --resume)")
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                torch.nn.utils.clip_grad_norm_(state.unet.parameters(), tc.grad_clip or float("inf"))
                optimizer.step()
                lr_sched.step()
                state.update_ema(tc.ema_decay, step)
                step += 1
                loss_value = float(loss.detach())
                progress.update(task, advance=1, epoch=epoch + 1, loss=loss_value)
                if step % tc.log_every == 0 or step == tc.steps:
                    tracker.log({"step": step, "epoch": round(step / per_epoch, 4), "split": "train",
                                 "loss": loss_value, "lr": lr_sched.get_last_lr()[0]})
                if step % tc.checkpoint_every == 0 or step == tc.steps:
                    save(step)
                if step >= tc.steps:
                    break
    tracker.close()
    save_tensors(state.final(tc.ema_decay).state_dict(), run_dir / WEIGHTS)
    write_done(run_dir, {"task": "diffusion", "name": cfg.name, "steps": tc.steps, "final_loss": loss_value,
                         "n_params": n_params, "train_seconds": round(time.perf_counter() - t_train, 1),
                         "wall_seconds": round(time.time() - t_start, 1)})
    return run_dir


def read_losses(run_dir: Path) -> list[float]:
    """Logged training losses of a diffusion run, in order."""
    path = Path(run_dir) / "metrics.jsonl"
    return [json.loads(x)["loss"] for x in path.read_text().splitlines() if x.strip()] if path.exists() else []
