"""The training loop: AdamW + warmup/cosine, AMP, accumulation with cached negatives, clipping,
checkpoints every N epochs, exact resume, and a hard stop on a non-finite loss."""

from __future__ import annotations

import contextlib
import json
import random
import time
from pathlib import Path

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from jointspace.config import RunConfig, save_config
from jointspace.data.dataset import SplitData, load_split
from jointspace.data.shards import read_info
from jointspace.data.sources import load_sources
from jointspace.evaluate.embed import embed_split
from jointspace.evaluate.retrieval import retrieval_metrics
from jointspace.kinds import Prep, with_role
from jointspace.losses import BindingLoss, binding_pairs, positive_mask
from jointspace.model import JointModel, text_tokenizers
from jointspace.runs import CONFIG, WEIGHTS, build_from_info, prepare_run_dir, resolve_device, write_run_info
from jointspace.towers.lora import parameter_summary
from jointspace.train.batches import InMemoryBatches, StreamedBatches
from jointspace.train.checkpoint import latest_checkpoint, resume_latest, save_checkpoint, save_tensors
from jointspace.train.distributed import DistInfo, barrier, cleanup, init_distributed, wrap_ddp
from jointspace.train.optim import build_optimizer, build_scheduler
from jointspace.train.tracking import Tracker


class NonFiniteLossError(RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the run stopped without writing a checkpoint."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


def autocast(device: torch.device, amp: str):
    """Autocast context for the configured precision ('auto': bf16 on a CUDA GPU that has it, else off)."""
    if amp == "auto":
        amp = "bf16" if device.type == "cuda" and torch.cuda.is_bf16_supported() else "none"
    if amp == "none":
        return contextlib.nullcontext()
    return torch.autocast(device.type, dtype=torch.bfloat16 if amp == "bf16" else torch.float16)


def ensure_dataset(cfg: RunConfig) -> Path:
    """The shard folder, synthesised first when it is missing and `data.synth` names a built-in set."""
    root = Path(cfg.data.path)
    if not root.exists() and cfg.data.synth:
        from jointspace.data.builtin import synthesize

        synthesize(cfg.data.synth, root, seed=cfg.seed, n=cfg.data.synth_size)
    return root


def prepare_data(cfg: RunConfig, prep: Prep | None = None) -> tuple[dict, SplitData | None, SplitData | None]:
    """dataset.json info, and the train (None when streamed) and validation splits; validation is
    prepared as the train split was (or as `prep`, the streamed train split's)."""
    root = ensure_dataset(cfg)
    info = read_info(root)
    kw = split_kwargs(cfg)
    if cfg.data.streaming:
        train = None
    elif cfg.data.sources:  # the train split mixes these folders; val/test stay those of data.path
        train = load_sources(cfg.data, "train", info.get("class_names"), **{**kw, "label_map": None})
    else:
        train = load_split(root, "train", **kw)
    fixed = train.prep if train is not None else prep
    val = load_split(root, "val", **kw, prep=fixed) if (root / "val").exists() else None
    return info, train, val


def split_kwargs(cfg: RunConfig) -> dict:
    """load_split keyword arguments a run's config implies (sizes, label map, the text towers' tokenizers)."""
    d = cfg.data
    return {"modalities": d.modalities, "image_size": d.image_size, "context_length": d.context_length,
            "max_frames": d.max_frames, "max_bad_fraction": d.max_bad_fraction, "label_map": d.label_map or None,
            "tokenizers": text_tokenizers(cfg.model), "max_range": d.max_range, "max_points": d.max_points}


@contextlib.contextmanager
def frozen_norm_stats(model: torch.nn.Module):
    """BatchNorm layers still normalise with batch statistics but leave their running statistics (and
    batch count) as they were: the no-grad pass that caches features must not count a micro-batch twice."""
    saved = []
    for m in model.modules():
        if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.training and m.track_running_stats:
            saved.append((m, m.momentum, m.num_batches_tracked.clone()))
            m.momentum = 0.0  # running = (1 - 0) x running + 0 x batch
    try:
        yield
    finally:
        for m, momentum, count in saved:
            m.momentum = momentum
            m.num_batches_tracked.copy_(count)


def accumulated_backward(model: JointModel, loss_fn: BindingLoss, micro: list[dict], pos_mask,
                         amp_ctx, forward_model: torch.nn.Module | None = None) -> tuple[torch.Tensor, dict]:
    """Backward over micro-batches with negatives from the whole accumulated batch (open_clip accum_freq).

    Features of all micro-batches are first computed without grad; each micro-batch is then re-encoded
    with grad and the loss over the full batch is back-propagated through its slice only. Summed, these
    give the gradient of the full-batch loss; the temperature gets its gradient once. `forward_model`
    (DDP / compiled wrapper of `model`) runs the forward passes; DDP syncs gradients on the last one.
    """
    fwd = forward_model or model
    bias = model.logit_bias
    if len(micro) == 1:
        with amp_ctx:
            emb = fwd(micro[0])
            loss, parts = loss_fn(emb, model.scale(), pos_mask, bias)
        loss.backward()
        return loss.detach(), parts
    with torch.no_grad(), amp_ctx, frozen_norm_stats(model):
        cached = [model(mb) for mb in micro]
    for j, mb in enumerate(micro):
        sync = contextlib.nullcontext() if j == len(micro) - 1 or not hasattr(fwd, "no_sync") else fwd.no_sync()
        with sync, amp_ctx:
            fresh = fwd(mb)
            emb = {m: torch.cat([fresh[m] if k == j else cached[k][m] for k in range(len(micro))]) for m in fresh}
            scale = model.scale() if j == 0 else model.scale().detach()
            loss, parts = loss_fn(emb, scale, pos_mask, bias if j == 0 else bias.detach())
            loss.backward()
    return loss.detach(), parts


@torch.no_grad()
def validate(model: JointModel, loss_fn: BindingLoss, data: SplitData, cfg: RunConfig, device) -> dict:
    """Validation loss (full split as one batch per 512) and R@1 for the trained pairs."""
    emb = embed_split(model, data, device=device)
    labels = data.labels
    out: dict[str, float] = {}
    losses = []
    for start in range(0, len(data), 512):
        sl = slice(start, start + 512)
        batch = {"label": labels[sl], **{m: data.inputs[m][sl] for m in data.inputs}}
        mask = positive_mask(batch, cfg.loss.positives, _text_key(data))
        loss, _ = loss_fn({m: e[sl] for m, e in emb.items()}, model.scale().cpu(), mask, model.logit_bias.cpu())
        losses.append(float(loss))
    out["loss"] = float(np.mean(losses))
    by_label = cfg.loss.positives == "label"
    for a, b in loss_fn.pairs:
        for q, g in ((a, b), (b, a)):
            r = retrieval_metrics(emb[q], emb[g], labels if by_label else None, labels if by_label else None, ks=(1,))
            out[f"{q}->{g}/R@1"] = r["R@1"]
    return out


def _text_key(data: SplitData) -> str | None:
    return with_role(data.kinds, "captions")


def _all_finite(loss: torch.Tensor, grad_norm: torch.Tensor, dist_info: DistInfo) -> bool:
    """True when loss and gradient norm are finite on every rank."""
    ok = torch.tensor(float(torch.isfinite(loss) and torch.isfinite(grad_norm)))
    if dist_info.enabled:
        torch.distributed.all_reduce(ok, op=torch.distributed.ReduceOp.MIN)
    return bool(ok.item())


def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> Path:
    """Train a joint space as configured; returns the run folder. Under torchrun, trains data-parallel."""
    device = resolve_device(cfg.train.device)
    dist_info = init_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    main = dist_info.is_main
    if main:
        run_dir = prepare_run_dir(cfg.run_dir, resume, overwrite)
    barrier(dist_info)
    run_dir = cfg.run_dir
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.seed)

    if main:  # a built-in set is synthesised once
        ensure_dataset(cfg)
    barrier(dist_info)
    streamed = None
    if cfg.data.streaming:
        streamed = StreamedBatches(cfg, dist_info, device, read_info(cfg.data.path).get("class_names"))
    info, train_data, val_data = prepare_data(cfg, streamed.prep if streamed else None)
    if streamed is not None:
        batches, kinds, class_names, prep = streamed, streamed.kinds, streamed.class_names, streamed.prep
    else:
        kinds, class_names, prep = train_data.kinds, train_data.class_names, train_data.prep
    picture = with_role(kinds, "picture")
    run_info = {"kinds": kinds, "prep": prep.to_json(), "class_names": class_names,
                "image_channels": prep.channels.get(picture) if picture else None,
                "data_path": cfg.data.path, "dataset": {k: v for k, v in info.items() if k != "splits"}}
    model = build_from_info(cfg, run_info).to(device)
    model.logit_bias.requires_grad_(cfg.loss.name == "siglip")  # DDP needs every trainable parameter used
    if cfg.train.channels_last and device.type == "cuda":
        model = model.to(memory_format=torch.channels_last)
    pairs = binding_pairs(list(kinds), cfg.loss.anchor, cfg.loss.pairs)
    loss_fn = BindingLoss(pairs, cfg.loss.name, cfg.loss.weights, dist_info.rank, dist_info.world_size,
                          cfg.train.local_loss)
    val_loss_fn = BindingLoss(pairs, cfg.loss.name, cfg.loss.weights)
    text_key = with_role(kinds, "captions")

    batch_size = cfg.train.batch_size  # global batch, split over ranks
    if batch_size % (dist_info.world_size * cfg.train.accum_steps):
        raise ValueError(f"train.batch_size={batch_size} must divide by world size x accum_steps "
                         f"({dist_info.world_size} x {cfg.train.accum_steps})")
    if train_data is not None:
        batches = InMemoryBatches(cfg, train_data, dist_info, device, text_key)
    n_steps_epoch = batches.steps_per_epoch
    if n_steps_epoch <= 0:
        raise ValueError(f"train.batch_size={batch_size} exceeds the training samples of one epoch")
    total_steps = n_steps_epoch * cfg.train.epochs
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    ckpt_dir = run_dir / "checkpoints"

    start_epoch, step, skip = 0, 0, 0
    if resume:
        state = resume_latest(ckpt_dir, model, optimizer, scheduler)
        start_epoch, step, skip = state["epoch"], state["step"], state.get("batch_in_epoch", 0)
    elif main:
        save_config(cfg, run_dir / CONFIG)
        write_run_info(run_dir, run_info)
    start_step = step
    if dist_info.enabled:
        torch.manual_seed(cfg.seed * 1000 + dist_info.rank + step)  # different dropout per rank
    tracker = Tracker(run_dir, cfg.tracker if main else "none", cfg.model_dump(mode="json"), cfg.name, enabled=main)
    amp_ctx = autocast(device, cfg.train.amp)
    forward_model = wrap_ddp(model, dist_info, device)
    if cfg.train.compile:
        forward_model = torch.compile(forward_model)

    if main:
        print(f"run {run_dir}: {n_steps_epoch * batch_size} train samples per epoch, modalities {list(kinds)}, pairs {pairs}, "
              f"device {device}, world size {dist_info.world_size}\n  {parameter_summary(model)}")
    progress = Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(), TextColumn("{task.completed}/{task.total}"),
                        TextColumn("loss {task.fields[loss]:.4f}"), TimeRemainingColumn(),
                        disable=not (show_progress and main))
    t0 = time.time()
    with progress:
        task = progress.add_task("train", total=total_steps, completed=step, epoch=start_epoch, loss=float("nan"))
        for epoch in range(start_epoch, cfg.train.epochs):
            model.train()
            for local, mask in batches.epoch(epoch, skip if epoch == start_epoch else 0):
                rows = torch.arange(len(local["label"]), device=device).chunk(cfg.train.accum_steps)
                micro = [{k: v[r] for k, v in local.items()} for r in rows]
                optimizer.zero_grad(set_to_none=True)
                loss, parts = accumulated_backward(model, loss_fn, micro, mask, amp_ctx, forward_model)
                grad_norm = torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.train.grad_clip or float("inf"))
                if not _all_finite(loss, grad_norm, dist_info):
                    tracker.close()
                    last = latest_checkpoint(ckpt_dir)
                    raise NonFiniteLossError(
                        f"non-finite loss {float(loss)} / grad norm {float(grad_norm)} at step {step + 1} (epoch {epoch + 1}); "
                        f"stopped without saving. Last good checkpoint: {last or 'none yet'}")
                optimizer.step()
                scheduler.step()
                with torch.no_grad():
                    model.logit_scale.clamp_(max=model.max_log_scale)
                step += 1
                progress.update(task, advance=1, epoch=epoch + 1, loss=float(loss))
                if step % cfg.train.log_every == 0 or step == total_steps:
                    tracker.log({"step": step, "epoch": round(step / n_steps_epoch, 4), "split": "train", "loss": float(loss),
                                 "lr": scheduler.get_last_lr()[0], "temperature": float(1 / model.scale().detach()),
                                 **{f"loss/{k}": float(v) for k, v in parts.items()}})
                in_epoch = step - epoch * n_steps_epoch
                every = cfg.train.checkpoint_every_steps
                if main and every and step % every == 0 and in_epoch < n_steps_epoch:
                    save_checkpoint(ckpt_dir, f"step_{step:07d}", model, optimizer,
                                    {"epoch": epoch, "step": step, "batch_in_epoch": in_epoch,
                                     "scheduler": scheduler.state_dict()}, keep=cfg.train.keep_checkpoints)
            done = epoch + 1
            if main and val_data is not None and (done % cfg.train.eval_every == 0 or done == cfg.train.epochs):
                tracker.log({"step": step, "epoch": done, "split": "val",
                             **validate(model, val_loss_fn, val_data, cfg, device)})
            if main and (done % cfg.train.checkpoint_every == 0 or done == cfg.train.epochs):
                save_checkpoint(ckpt_dir, f"epoch_{done:04d}", model, optimizer,
                                {"epoch": done, "step": step, "scheduler": scheduler.state_dict()},
                                keep=cfg.train.keep_checkpoints)
            barrier(dist_info)
    tracker.close()
    if main:
        seconds = max(time.time() - t0, 1e-9)
        save_tensors(model.state_dict(), run_dir / (WEIGHTS + ".tmp"))
        (run_dir / (WEIGHTS + ".tmp")).replace(run_dir / WEIGHTS)
        (run_dir / "train_summary.json").write_text(json.dumps(
            {"steps": step, "seconds": round(seconds, 2), "world_size": dist_info.world_size,
             "samples_per_second": round((step - start_step) * batch_size / seconds, 1)}))
    cleanup(dist_info)
    return run_dir
