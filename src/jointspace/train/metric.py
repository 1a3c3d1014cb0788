"""Metric learning of one tower with pytorch-metric-learning (loss x miner x distance x reducer from the
config), evaluated by k-NN accuracy of test against train embeddings and drawn as a UMAP."""

from __future__ import annotations

import contextlib
import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jointspace.config import RunConfig
from jointspace.data.dataset import SplitData, epoch_batches
from jointspace.fusion import ModalityEncoders, build_encoders
from jointspace.losses import build_metric_loss
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


def n_mined(indices: tuple | None) -> int:
    """Number of tuples a miner returned: triplets (a, p, n), or pairs (a1, p, a2, n) positive + negative."""
    if indices is None:
        return 0
    if len(indices) == 3:
        return len(indices[0])
    return len(indices[0]) + len(indices[2])


def metric_step(model: ModalityEncoders, modality: str, loss_fn: nn.Module, miner: nn.Module | None,
                batch: dict[str, torch.Tensor], amp_ctx=None) -> tuple[torch.Tensor, int]:
    """Forward + backward of one batch: embed, mine (if a miner is set), PML loss. Returns (loss, #mined)."""
    with amp_ctx or contextlib.nullcontext():
        emb = model({modality: batch[modality]})[modality]
    emb = emb.float()
    indices = miner(emb, batch["label"]) if miner is not None else None
    loss = loss_fn(emb, batch["label"], indices)
    loss.backward()
    return loss.detach(), n_mined(indices)


@torch.no_grad()
def embed(model: ModalityEncoders, modality: str, data: SplitData, device: torch.device,
          batch_size: int = 512) -> torch.Tensor:
    """Raw (unnormalised) embeddings [N, D] of a split, eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    out = [model({modality: data.inputs[modality][s:s + batch_size].to(device)})[modality].float().cpu()
           for s in range(0, len(data), batch_size)]
    model.train(was_training)
    return torch.cat(out)


@torch.no_grad()
def split_loss(loss_fn: nn.Module, emb: torch.Tensor, labels: torch.Tensor, batch_size: int) -> float:
    """The metric loss (no miner) averaged over consecutive chunks of `batch_size` (pair/triplet losses
    over a whole split would be cubic in its size)."""
    vals = [float(loss_fn(emb[s:s + batch_size], labels[s:s + batch_size]))
            for s in range(0, len(emb), batch_size) if len(emb[s:s + batch_size]) > 1]
    return float(np.mean(vals))


def knn_metrics(train_emb: torch.Tensor, train_y: torch.Tensor, test_emb: torch.Tensor, test_y: torch.Tensor,
                k: int = 5) -> dict[str, float]:
    """k-NN accuracy (cosine, majority of the k nearest train items; sklearn) and PML's AccuracyCalculator
    precision@1 and MAP@R of test queries against the train set (torch k-NN, no faiss)."""
    from pytorch_metric_learning.distances import CosineSimilarity
    from pytorch_metric_learning.utils.accuracy_calculator import AccuracyCalculator
    from pytorch_metric_learning.utils.inference import CustomKNN
    from sklearn.neighbors import KNeighborsClassifier

    knn = KNeighborsClassifier(n_neighbors=min(k, len(train_y)), metric="cosine")
    knn.fit(train_emb.numpy(), train_y.numpy())
    out = {f"knn{k}_accuracy": float(knn.score(test_emb.numpy(), test_y.numpy()))}
    calc = AccuracyCalculator(include=("precision_at_1", "mean_average_precision_at_r"), k="max_bin_count",
                              knn_func=CustomKNN(CosineSimilarity()), device=torch.device("cpu"))
    acc = calc.get_accuracy(test_emb, test_y, train_emb, train_y, ref_includes_query=False)
    out.update({k_: float(v) for k_, v in acc.items()})
    return out


def train_metric(cfg: RunConfig, overwrite: bool = False, show_progress: bool = True) -> Path:
    """Train one tower with the configured PML loss/miner, evaluate k-NN accuracy; returns the run folder."""
    modality = cfg.metric.modality or cfg.data.modalities[0]
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"modalities": [modality]})})
    t_start = time.time()
    run_dir = start_run(cfg, overwrite)
    device = resolve_device(cfg.train.device)
    seed_everything(cfg.seed)
    _info, train_data, val_data, test_data = load_splits(cfg)
    kinds = train_data.kinds
    shape = tuple(train_data.inputs[modality].shape[1:])
    model = build_encoders(cfg.model, kinds, train_data.prep, cfg.model.embed_dim).to(device)
    n_classes = n_classes_of(train_data)
    loss_fn, miner = build_metric_loss(cfg.metric, cfg.model.embed_dim, n_classes)
    loss_fn = loss_fn.to(device)
    both = nn.ModuleDict({"model": model, "loss": loss_fn})  # what is optimised and checkpointed
    n_params = count_parameters(model)
    write_run_info(run_dir, {"task": "metric", "modality": modality, "kinds": kinds, "prep": train_data.prep.to_json(),
                             "class_names": train_data.class_names, "input_shape": list(shape),
                             "data_path": cfg.data.path, "n_params": n_params})
    optimizer = build_optimizer(model, cfg.train)
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:  # e.g. ArcFace's class centres W
        optimizer.add_param_group({"params": loss_params, "lr": cfg.metric.loss_lr or cfg.train.lr,
                                   "weight_decay": 0.0})
    n_steps_epoch = steps_or_fail(len(train_data), cfg.train.batch_size)
    total_steps = n_steps_epoch * cfg.train.epochs
    scheduler = build_scheduler(optimizer, cfg.train, total_steps)
    tracker = Tracker(run_dir, cfg.tracker, cfg.model_dump(mode="json"), cfg.name)
    amp_ctx = autocast(device, cfg.train.amp)
    print(f"run {run_dir}: metric learning of {modality} with {type(loss_fn).__name__}"
          f"{' + ' + type(miner).__name__ if miner else ''}, {n_params:,} parameters "
          f"(+{sum(p.numel() for p in loss_params):,} in the loss), device {device}")

    step, train_seconds, val_loss = 0, 0.0, None
    progress = progress_bar(show_progress)
    with progress, PeakMemory(device) as memory:
        task = progress.add_task("train", total=total_steps, epoch=0, loss=float("nan"))
        for epoch in range(cfg.train.epochs):
            model.train()
            t0 = time.perf_counter()
            for idx in epoch_batches(len(train_data), cfg.train.batch_size, cfg.seed, epoch):
                optimizer.zero_grad(set_to_none=True)
                batch = to_device(train_data.batch(idx), device)
                loss, mined = metric_step(model, modality, loss_fn, miner, batch, amp_ctx)
                clip_or_stop(both.parameters(), loss, cfg.train.grad_clip, step, epoch, tracker)
                optimizer.step()
                scheduler.step()
                step += 1
                progress.update(task, advance=1, epoch=epoch + 1, loss=float(loss))
                if step % cfg.train.log_every == 0 or step == total_steps:
                    tracker.log({"step": step, "epoch": round(step / n_steps_epoch, 4), "split": "train",
                                 "loss": float(loss), "mined": mined, "lr": scheduler.get_last_lr()[0]})
            train_seconds += time.perf_counter() - t0
            done = epoch + 1
            if val_data is not None and (done % cfg.train.eval_every == 0 or done == cfg.train.epochs):
                val_emb = embed(model, modality, val_data, device)
                val_loss = split_loss(loss_fn, val_emb.to(device), val_data.labels.to(device),
                                      cfg.train.batch_size)
                tracker.log({"step": step, "epoch": done, "split": "val", "loss": val_loss})
            if done % cfg.train.checkpoint_every == 0 or done == cfg.train.epochs:
                save_checkpoint(run_dir / "checkpoints", f"epoch_{done:04d}", both, optimizer,
                                {"epoch": done, "step": step, "scheduler": scheduler.state_dict()},
                                keep=cfg.train.keep_checkpoints)
    tracker.close()
    save_tensors(both.state_dict(), run_dir / WEIGHTS)
    train_emb = F.normalize(embed(model, modality, train_data, device), dim=-1)
    test_emb = F.normalize(embed(model, modality, test_data, device), dim=-1)
    result = knn_metrics(train_emb, train_data.labels, test_emb, test_data.labels, cfg.metric.knn_k)
    (run_dir / "eval").mkdir(exist_ok=True)
    np.savez_compressed(run_dir / "eval" / f"embeddings_{cfg.eval.split}.npz",
                        **{f"emb_{modality}": test_emb.numpy()}, labels=test_data.labels.numpy(),
                        class_names=np.array(test_data.class_names))
    if cfg.metric.plot != "none":
        from jointspace.viz.plots import plot_umap

        plot_umap({modality: test_emb.numpy()}, test_data.labels.numpy(), test_data.class_names,
                  run_dir / "plots" / f"{cfg.metric.plot}_{cfg.eval.split}.png", seed=cfg.seed,
                  method=cfg.metric.plot)
    (run_dir / "eval.json").write_text(json.dumps({"split": cfg.eval.split, "n_samples": len(test_data),
                                                   "modality": modality, **result}, indent=2))
    summary = {"task": "metric", "name": cfg.name, "seed": cfg.seed, "loss": cfg.metric.loss.name,
               "miner": cfg.metric.miner.name if cfg.metric.miner else None,
               "test_accuracy": result[f"knn{cfg.metric.knn_k}_accuracy"], **result, "val_loss": val_loss,
               "n_params": n_params, "epochs": cfg.train.epochs,
               "seconds_per_epoch": round(train_seconds / cfg.train.epochs, 3), **memory.result(),
               "wall_seconds": round(time.time() - t_start, 1)}
    write_done(run_dir, summary)
    return run_dir
