"""The contrastive task: a joint space of N modalities bound by InfoNCE / SigLIP (ImageBind-style anchor
pairs, positive masks from instances, labels or captions), trained by the engine, data-parallel under
torchrun, with accumulation that keeps every negative of the accumulated batch (cached features)."""

from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from pydantic import Field

from jointspace.config import RunConfig
from jointspace.data.dataset import SplitData
from jointspace.data.sources import source_of
from jointspace.engine import NonFiniteLossError, Objective, StepContext, fit, seed_everything  # noqa: F401
from jointspace.engine.checkpoint import save_weights
from jointspace.engine.distributed import DistInfo, barrier, cleanup, init_distributed, wrap_ddp
from jointspace.engine.optim import build_optimizer, build_scheduler
from jointspace.errors import UsageError
from jointspace.evaluate.embed import embed_split
from jointspace.evaluate.retrieval import retrieval_metrics
from jointspace.kinds import Prep, with_role
from jointspace.losses import BindingLoss, LossContext, binding_pairs, build_pair_loss, positive_mask
from jointspace.model import JointModel
from jointspace.run_dir import RunDir, RunInfo, read_run_info, write_run_info
from jointspace.runs import build_from_info, resolve_device
from jointspace.tasks.batches import InMemoryBatches, StreamedBatches, one_ahead, to_device
from jointspace.tasks.common import (
    PeakMemory,
    ensure_dataset,
    init_towers,
    plan_of,
    prepare_data,
    resumed_prep,
    skipped,
    start_run,
    tracker_of,
)
from jointspace.tasks.contrastive_summary import summarise
from jointspace.tasks.lifecycle import fresh_or_resumed
from jointspace.tasks.predictions import retrieval_predictions
from jointspace.tasks.reference_terms import reference_terms
from jointspace.tasks.registry import Task
from jointspace.towers.lora import parameter_summary


class ContrastiveInfo(RunInfo):
    """A joint-space run's run.json: the input channels of its picture modality (None without one) and the
    data set's dataset.json less its splits (the prompts of zero-shot evaluation, the modalities)."""

    image_channels: int | None = None
    dataset: dict[str, Any] = Field(default_factory=dict)


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
                         amp_ctx, forward_model: torch.nn.Module | None = None,
                         backward: Callable[[torch.Tensor], None] | None = None,
                         plans: list[dict] | None = None) -> tuple[torch.Tensor, dict]:
    """Backward over micro-batches with negatives from the whole accumulated batch (open_clip accum_freq).

    Features of all micro-batches are first computed without grad; each micro-batch is then re-encoded
    with grad and the loss over the full batch is back-propagated through its slice only. Summed, these
    give the gradient of the full-batch loss; the temperature gets its gradient once. `forward_model`
    (DDP / compiled wrapper of `model`) runs the forward passes; DDP syncs gradients on the last one.
    `backward` (the engine's, with loss scaling) back-propagates each loss. `plans`: one host plan per
    micro-batch (`JointModel.host_plan`), so the forward passes read nothing back from the device.
    """
    fwd = forward_model if forward_model is not None else model  # a compiled module has no truth value
    backward = backward or torch.Tensor.backward
    plans = plans or [None] * len(micro)
    if len(micro) == 1:
        with amp_ctx:
            emb = fwd(micro[0], plan=plans[0])
            loss, parts = loss_fn(emb, pos_mask, LossContext.from_logits(model.logits))
        backward(loss)
        return loss.detach(), parts
    with torch.no_grad(), amp_ctx, frozen_norm_stats(model):
        cached = [model(mb, plan=plan) for mb, plan in zip(micro, plans)]
    for j, mb in enumerate(micro):
        sync = contextlib.nullcontext() if j == len(micro) - 1 or not hasattr(fwd, "no_sync") else fwd.no_sync()
        with sync, amp_ctx:
            fresh = fwd(mb, plan=plans[j])
            emb = {m: torch.cat([fresh[m] if k == j else cached[k][m] for k in range(len(micro))]) for m in fresh}
            loss, parts = loss_fn(emb, pos_mask, LossContext.from_logits(model.logits, detach=j > 0))
            backward(loss)
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
        mask = positive_mask(batch, cfg.loss.positives, with_role(data.kinds, "captions"))
        ctx = LossContext.from_logits(model.logits, device="cpu")
        loss, _ = loss_fn({m: e[sl] for m, e in emb.items()}, mask, ctx)
        losses.append(float(loss))
    out["loss"] = float(np.mean(losses))
    by_label = cfg.loss.positives == "label"
    for a, b in loss_fn.pairs:
        for q, g in ((a, b), (b, a)):
            r = retrieval_metrics(emb[q], emb[g], labels if by_label else None, labels if by_label else None, ks=(1,))
            out[f"{q}->{g}/R@1"] = r["R@1"]
    return out


class ContrastiveObjective(Objective):
    """Batches with their global positive mask; the binding loss over all pairs; the temperature clamp."""

    def __init__(self, cfg: RunConfig, model: JointModel, batches, loss_fn: BindingLoss, val_loss_fn: BindingLoss,
                 val_data: SplitData | None, forward_model: torch.nn.Module, device: torch.device,
                 dist: DistInfo, references=None):
        self.cfg, self.module, self.batches_of, self.loss_fn, self.dist = cfg, model, batches, loss_fn, dist
        self.references = references  # loss.guide / loss.distill: the step's loss takes their part
        self.val_loss_fn, self.val_data, self.forward_model, self.device = val_loss_fn, val_data, forward_model, device

    def batches(self, epoch: int, skip: int) -> Iterator:
        """(device batch, global positive mask, micro-batch plans) per step: shapes and distinct rows are
        decided on the host (JointModel.host_plan), one step ahead of the step that uses them."""
        chunks = self.cfg.train.accum_steps
        steps = (self._planned(local, mask, host, chunks) for local, mask, host in self.batches_of.epoch(epoch, skip))
        return one_ahead(steps)

    def _planned(self, local: dict, mask, host: dict, chunks: int) -> tuple:
        widths, plans = self.module.host_plan(host, chunks)
        local = {k: v[:, :widths[k]] if k in widths else v for k, v in local.items()}
        moved = [{m: tuple(to_device(t, self.device) for t in rows) for m, rows in plan.items()} for plan in plans]
        return local, mask, moved

    def backward(self, batch, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        local, mask, plans = batch
        rows = torch.arange(len(local["label"]), device=self.device).chunk(ctx.accum_steps)
        micro = [{k: v[r] for k, v in local.items()} for r in rows]
        loss_fn = self.references.bound(self.loss_fn, local, mask, ctx) if self.references else self.loss_fn
        loss, parts = accumulated_backward(self.module, loss_fn, micro, mask, ctx.autocast(),
                                           self.forward_model, ctx.backward, plans)
        return loss, {f"loss/{k}": v for k, v in parts.items()}  # tensors: read when the engine logs

    def after_step(self, step: int) -> None:
        self.module.logits.clamp_()

    def log_extras(self) -> dict:
        return {"temperature": float(1 / self.module.logits.scale().detach())}

    def validate(self) -> dict | None:
        if self.val_data is None:
            return None
        return validate(self.module, self.val_loss_fn, self.val_data, self.cfg, self.device)


def _data(cfg: RunConfig, dist_info: DistInfo, device: torch.device,
          recorded: Prep | None) -> tuple[dict, object, SplitData | None, dict]:
    """(dataset info, the train batches, the val split, run info) of a run, streamed or in memory;
    prepared as `recorded` (a resumed run's Prep) when given."""
    streamed = None
    if cfg.data.streaming:
        streamed = StreamedBatches(cfg, dist_info, device, source_of(cfg.data).info.get("class_names"))
        streamed.prep = recorded or streamed.prep
    info, train_data, val_data = prepare_data(cfg, streamed.prep if streamed else recorded)
    source = streamed or train_data
    kinds, prep = source.kinds, source.prep
    picture = with_role(kinds, "picture")
    run_info = ContrastiveInfo(task="contrastive", kinds=kinds, prep=prep.to_json(), class_names=source.class_names,
                       skipped=skipped(train=train_data, val=val_data),
                       image_channels=prep.channels.get(picture) if picture else None,
                       data_path=cfg.data.path, dataset={k: v for k, v in info.items() if k != "splits"})
    text_key = with_role(kinds, "captions")
    batches = streamed or InMemoryBatches(cfg, train_data, dist_info, device, text_key)
    return info, batches, val_data, run_info


def _build(cfg: RunConfig, run_info: dict, dist_info: DistInfo, device: torch.device,
           init: dict | None) -> tuple[JointModel, list, BindingLoss, BindingLoss]:
    model = build_from_info(cfg, run_info, init).to(device)
    pairs = binding_pairs(list(run_info.kinds), cfg.loss.anchor, cfg.loss.pairs)
    pair_loss = build_pair_loss(cfg.loss.name, cfg.loss.params, cfg.train.local_loss)
    loss_fn = BindingLoss(pairs, pair_loss, cfg.loss.weights, dist_info.rank, dist_info.world_size)
    if cfg.train.channels_last:
        model = model.to(memory_format=torch.channels_last)
    return model, pairs, loss_fn, BindingLoss(pairs, pair_loss, cfg.loss.weights)


@fresh_or_resumed
def train(cfg: RunConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> Path:
    """Train a joint space as configured; returns the run folder. Under torchrun, trains data-parallel."""
    t_start = time.time()
    device = resolve_device(cfg.train.device)
    dist_info = init_distributed(device.type)
    if dist_info.enabled and device.type == "cuda":
        device = torch.device("cuda", dist_info.local_rank)
    main = dist_info.is_main
    if main:
        ensure_dataset(cfg)  # a built-in set is synthesised once
    barrier(dist_info)
    cfg, init = init_towers(cfg, resume)
    if main:
        start_run(cfg, resume, overwrite)
    barrier(dist_info)
    run_dir = cfg.run_dir
    if cfg.train.num_threads:
        torch.set_num_threads(cfg.train.num_threads)
    seed_everything(cfg.seed)
    _info, batches, val_data, run_info = _data(cfg, dist_info, device, resumed_prep(cfg, resume))
    model, pairs, loss_fn, val_loss_fn = _build(cfg, run_info, dist_info, device, init)
    if init:
        run_info = run_info.updated(init_from=init["sources"])  # run -> fingerprint of the weights it started from
    references, run_info = reference_terms(cfg, loss_fn, run_info, device, resume)  # loss.guide, loss.distill
    batch_size = cfg.train.batch_size  # global batch, split over ranks
    if batch_size % (dist_info.world_size * cfg.train.accum_steps):
        raise UsageError(f"train.batch_size={batch_size} must divide by world size x accum_steps "
                         f"({dist_info.world_size} x {cfg.train.accum_steps})")
    plan = plan_of(cfg.train, batches.steps_per_epoch)
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, plan.total_steps)
    if main and not resume:
        write_run_info(run_dir, run_info)
    if dist_info.enabled:
        torch.manual_seed(cfg.seed * 1000 + dist_info.rank)  # different dropout per rank
    forward_model = wrap_ddp(model, dist_info, device)
    if cfg.train.compile:
        forward_model = torch.compile(forward_model)
    obj = ContrastiveObjective(cfg, model, batches, loss_fn, val_loss_fn, val_data, forward_model, device, dist_info,
                               references)
    if main:
        print(f"run {run_dir}: {plan.steps_per_epoch * batch_size} train samples per epoch, modalities "
              f"{list(run_info.kinds)}, pairs {pairs}, device {device}, world size {dist_info.world_size}\n"
              f"  {parameter_summary(model)}")
    with PeakMemory(device) as memory:
        result = fit(obj, optimizer, scheduler, plan, run_dir, tracker_of(cfg, run_dir, enabled=main), device,
                     resume=resume, show_progress=show_progress, dist=dist_info)
    if main:
        _record(run_dir, model, batches, result, dist_info.world_size, batch_size, memory.result(), t_start)
    cleanup(dist_info)
    return run_dir


def _record(run_dir: Path, model: JointModel, batches, result, world_size: int, batch_size: int, memory: dict,
            t_start: float) -> None:
    """After training (main process): the streamed samples lost (counted as they were read) into run.json,
    the final weights, and the train summary (with the peak `memory`)."""
    if getattr(batches, "skipped", None):
        run_info = read_run_info(run_dir)
        streamed = {"n_skipped": max(v["n_skipped"] for v in batches.skipped.values()),
                    "per_epoch": {str(e + 1): v["n_skipped"] for e, v in sorted(batches.skipped.items())},
                    "reasons": next(iter(batches.skipped.values()))["reasons"]}
        write_run_info(run_dir, run_info.updated(skipped={**run_info.skipped, "train (streamed)": streamed}))
    run = RunDir(run_dir)
    save_weights(model.state_dict(), run.weights, run.checkpoints)
    run.write_train_summary(
        {"steps": result.step, "seconds": round(result.seconds, 2), "epochs_run": result.epochs_run,
         "world_size": world_size,
         "samples_per_second": round((result.step - result.start_step) * batch_size / result.seconds, 1),
         **memory, "wall_seconds": round(time.time() - t_start, 1)})


TASK = Task("contrastive", RunConfig, train, lambda d: f"done: {d}", verbs=("eval", "embed", "report", "index", "export"),
            finish=summarise, val_metrics=("loss", "R@1", "*->*/R@1"), joint_space=True,
            measure="mean class-level R@1 of test queries over the evaluated modality pairs",
            predictions=retrieval_predictions, finished=lambda d: RunDir(d).weights.exists(), info=ContrastiveInfo)
