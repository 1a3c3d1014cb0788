"""Training loop for fusion classifiers (cross-entropy): same optimizer, schedule, AMP, clipping,
checkpoints and tracking as the contrastive loop; test top-k, confusion matrix and per-class report."""

from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from jointspace.config import RunConfig
from jointspace.data.dataset import SplitData
from jointspace.data.sources import TrainSampler
from jointspace.evaluate.classifier_report import classification_summary
from jointspace.fusion import FusionClassifier, build_fusion
from jointspace.model import count_parameters
from jointspace.runs import WEIGHTS, resolve_device, write_run_info
from jointspace.train.checkpoint import save_checkpoint, save_tensors
from jointspace.train.common import (
    PeakMemory,
    clip_or_stop,
    load_splits,
    n_classes_of,
    progress_bar,
    start_run,
    steps_or_fail,
    to_device,
    write_done,
)
from jointspace.train.loop import autocast, seed_everything
from jointspace.train.optim import build_optimizer, build_scheduler
from jointspace.train.tracking import Tracker


@torch.no_grad()
def predict(model: FusionClassifier, data: SplitData, device: torch.device, batch_size: int = 512,
            amp: str = "none") -> torch.Tensor:
    """Logits [N, n_classes] of a whole split (eval mode), on the CPU."""
    was_training = model.training
    model.eval()
    out = []
    for start in range(0, len(data), batch_size):
        batch = to_device(data.batch(torch.arange(start, min(start + batch_size, len(data)))), device)
        with autocast(device, amp):
            out.append(model(batch).float().cpu())
    model.train(was_training)
    return torch.cat(out)


def build_classifier(cfg: RunConfig, data: SplitData) -> FusionClassifier:
    """The configured fusion classifier for the modalities and input shapes of `data`."""
    shapes = {m: tuple(data.inputs[m].shape[1:]) for m in data.kinds}
    return build_fusion(cfg.fusion, cfg.model, data.kinds, shapes, n_classes_of(data), data.prep)


def train_classifier(cfg: RunConfig, overwrite: bool = False, show_progress: bool = True) -> Path:
    """Train the configured fusion classifier, evaluate it on `eval.split`; returns the run folder.

    The run folder gets config.yaml, run.json, metrics.jsonl, checkpoints/, model.safetensors,
    classification_<split>.json/.txt, plots/confusion_<split>.png and, last, done.json (the summary).
    """
    t_start = time.time()
    run_dir = start_run(cfg, overwrite)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed)
    _info, train_data, val_data, test_data = load_splits(cfg)
    model = build_classifier(cfg, train_data).to(device)
    n_params = count_parameters(model)
    kinds = train_data.kinds
    write_run_info(run_dir, {"task": "classify", "kinds": kinds, "prep": train_data.prep.to_json(),
                             "class_names": train_data.class_names,
                             "input_shapes": {m: list(train_data.inputs[m].shape[1:]) for m in kinds},
                             "data_path": cfg.data.path, "n_params": n_params})
    sampler = TrainSampler.from_config(cfg.data, train_data)  # data.sources weights with data.resampled
    n_steps_epoch = steps_or_fail(sampler.n_samples, cfg.train.batch_size)
    total_steps = n_steps_epoch * cfg.train.epochs
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    tracker = Tracker(run_dir, cfg.tracker, cfg.model_dump(mode="json"), cfg.name)
    amp_ctx = autocast(device, cfg.train.amp)
    smoothing = cfg.fusion.label_smoothing
    print(f"run {run_dir}: {cfg.fusion.kind} fusion of {list(kinds)}, {len(train_data)} train samples, "
          f"{n_params:,} parameters, device {device}")

    step, train_seconds, val_metrics = 0, 0.0, {}
    progress = progress_bar(show_progress)
    with progress, PeakMemory(device) as memory:
        task = progress.add_task("train", total=total_steps, epoch=0, loss=float("nan"))
        for epoch in range(cfg.train.epochs):
            model.train()
            t0 = time.perf_counter()
            for idx in sampler.batches(cfg.train.batch_size, cfg.seed, epoch):
                optimizer.zero_grad(set_to_none=True)
                loss = torch.zeros(())
                for micro in idx.chunk(cfg.train.accum_steps):
                    batch = to_device(train_data.batch(micro), device)
                    with amp_ctx:
                        logits = model(batch).float()
                    part = F.cross_entropy(logits, batch["label"], label_smoothing=smoothing)
                    (part * len(micro) / len(idx)).backward()
                    loss = loss + part.detach().cpu() * len(micro) / len(idx)
                clip_or_stop(model.parameters(), loss, cfg.train.grad_clip, step, epoch, tracker)
                optimizer.step()
                scheduler.step()
                step += 1
                progress.update(task, advance=1, epoch=epoch + 1, loss=float(loss))
                if step % cfg.train.log_every == 0 or step == total_steps:
                    tracker.log({"step": step, "epoch": round(step / n_steps_epoch, 4), "split": "train",
                                 "loss": float(loss), "lr": scheduler.get_last_lr()[0]})
            train_seconds += time.perf_counter() - t0
            done = epoch + 1
            if val_data is not None and (done % cfg.train.eval_every == 0 or done == cfg.train.epochs):
                logits = predict(model, val_data, device, amp=cfg.train.amp)
                val_metrics = {"loss": float(F.cross_entropy(logits, val_data.labels)),
                               "accuracy": float((logits.argmax(1) == val_data.labels).float().mean())}
                tracker.log({"step": step, "epoch": done, "split": "val", **val_metrics})
            if done % cfg.train.checkpoint_every == 0 or done == cfg.train.epochs:
                save_checkpoint(run_dir / "checkpoints", f"epoch_{done:04d}", model, optimizer,
                                {"epoch": done, "step": step, "scheduler": scheduler.state_dict()},
                                keep=cfg.train.keep_checkpoints)
    tracker.close()
    save_tensors(model.state_dict(), run_dir / WEIGHTS)
    test = classification_summary(predict(model, test_data, device, amp=cfg.train.amp), test_data.labels,
                                  test_data.class_names, run_dir, cfg.eval.split)
    summary = {"task": "classify", "name": cfg.name, "seed": cfg.seed, "fusion": cfg.fusion.kind,
               "test_accuracy": test["top1"], "test_loss": test["loss"],
               "val_loss": val_metrics.get("loss"), "val_accuracy": val_metrics.get("accuracy"),
               "n_params": n_params, "epochs": cfg.train.epochs,
               "seconds_per_epoch": round(train_seconds / cfg.train.epochs, 3), **memory.result(),
               "wall_seconds": round(time.time() - t_start, 1)}
    (run_dir / "eval.json").write_text(json.dumps({"split": cfg.eval.split, **test}, indent=2))
    write_done(run_dir, summary)
    return run_dir
