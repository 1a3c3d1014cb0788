"""Metric learning of one tower with pytorch-metric-learning (loss x miner x distance x reducer from the
config), evaluated by k-NN accuracy of test against train embeddings and drawn as a UMAP."""

from __future__ import annotations

import contextlib
import itertools
import json
import time
from pathlib import Path
from typing import Any, Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from torch import nn

from jointspace.config import CONTRASTIVE_ONLY, RunConfig, _Strict, refuse_unread
from jointspace.data.dataset import SplitData, epoch_batches
from jointspace.engine import Objective, StepContext, fit
from jointspace.engine.checkpoint import save_weights
from jointspace.engine.optim import build_optimizer, build_scheduler
from jointspace.errors import UsageError
from jointspace.fusion import ModalityEncoders, build_encoders
from jointspace.losses import build_metric_loss
from jointspace.model import count_parameters
from jointspace.run_dir import EVAL, EVAL_DIR, RunDir, RunInfo, write_run_info
from jointspace.runs import resolve_device
from jointspace.tasks.common import (
    PeakMemory,
    done_line,
    init_towers,
    load_splits,
    n_classes_of,
    plan_of,
    resumed_prep,
    skipped,
    start_run,
    steps_or_fail,
    to_device,
    tracker_of,
    write_done,
)
from jointspace.tasks.lifecycle import fresh_or_resumed
from jointspace.tasks.registry import Task


class ComponentConfig(_Strict):
    """A pytorch-metric-learning class by name, with its constructor parameters."""

    name: str
    params: dict[str, Any] = Field(default_factory=dict)


class MetricConfig(_Strict):
    """Metric learning of one tower with pytorch-metric-learning: loss x miner x distance x reducer."""

    modality: str | None = None  # default: the first of data.modalities
    loss: ComponentConfig = Field(default_factory=lambda: ComponentConfig(name="TripletMarginLoss",
                                                                          params={"margin": 0.2}))
    miner: ComponentConfig | None = Field(default_factory=lambda: ComponentConfig(
        name="TripletMarginMiner", params={"margin": 0.2, "type_of_triplets": "hard"}))
    distance: ComponentConfig | None = None  # shared by loss and miner
    reducer: ComponentConfig | None = None
    loss_lr: float | None = Field(None, gt=0.0)  # lr of the loss's own parameters (ArcFace W); default train.lr
    knn_k: int = Field(5, ge=1)
    plot: Literal["umap", "pca", "none"] = "umap"


class MetricRunConfig(RunConfig):
    """A metric run's config: the common sections and `metric:` (loss, miner, distance, reducer)."""

    task: Literal["metric"] = "metric"
    metric: MetricConfig = Field(default_factory=MetricConfig)

    @model_validator(mode="after")
    def _reads_its_fields(self) -> MetricRunConfig:
        refuse_unread(self, (*CONTRASTIVE_ONLY, "data.batch_sampler"))
        return self


class MetricInfo(RunInfo):
    """A metric-learning run's run.json: the one modality its tower embeds, its input shape, its size."""

    modality: str | None = None
    input_shape: list[int] = Field(default_factory=list)
    n_params: int | None = None


def n_mined(indices: tuple | None) -> int:
    """Number of tuples a miner returned: triplets (a, p, n), or pairs (a1, p, a2, n) positive + negative."""
    if indices is None:
        return 0
    if len(indices) == 3:
        return len(indices[0])
    return len(indices[0]) + len(indices[2])


def metric_step(model: ModalityEncoders, modality: str, loss_fn: nn.Module, miner: nn.Module | None,
                batch: dict[str, torch.Tensor], amp_ctx=None, backward=None) -> tuple[torch.Tensor, int]:
    """Forward + backward of one batch: embed, mine (if a miner is set), PML loss. Returns (loss, #mined)."""
    with amp_ctx or contextlib.nullcontext():
        emb = model({modality: batch[modality]})[modality]
    emb = emb.float()
    indices = miner(emb, batch["label"]) if miner is not None else None
    loss = loss_fn(emb, batch["label"], indices)
    (backward or torch.Tensor.backward)(loss)
    return loss.detach(), n_mined(indices)


@torch.no_grad()
def embed(model: ModalityEncoders, modality: str, data: SplitData, device: torch.device,
          batch_size: int = 512) -> torch.Tensor:
    """Raw (unnormalised) embeddings [N, D] of a split, eval mode, on the CPU."""
    was_training = model.training
    model.eval()
    rows = torch.arange(len(data)).split(batch_size)
    out = [model({modality: data.batch(r)[modality].to(device)})[modality].float().cpu() for r in rows]
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


class MetricObjective(Objective):
    """A PML loss (and miner) on one tower's embeddings; validation by the loss over consecutive chunks."""

    def __init__(self, cfg: MetricRunConfig, modality: str, model: ModalityEncoders, loss_fn: nn.Module,
                 miner: nn.Module | None, train_data: SplitData, val_data: SplitData | None, device: torch.device):
        self.cfg, self.modality, self.model, self.loss_fn, self.miner = cfg, modality, model, loss_fn, miner
        self.train_data, self.val_data, self.device = train_data, val_data, device
        self.module = nn.ModuleDict({"model": model, "loss": loss_fn})  # what is optimised and checkpointed

    def batches(self, epoch: int, skip: int):
        batches = epoch_batches(len(self.train_data), self.cfg.train.batch_size, self.cfg.seed, epoch)
        return itertools.islice(batches, skip, None)

    def train_mode(self) -> None:
        self.model.train()

    def backward(self, idx: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        if ctx.accum_steps != 1:
            raise UsageError("train.accum_steps: metric learning mines within a batch; use 1")
        batch = to_device(self.train_data.batch(idx), self.device)
        loss, mined = metric_step(self.model, self.modality, self.loss_fn, self.miner, batch, ctx.autocast(),
                                  ctx.backward)
        return loss, {"mined": mined}

    def validate(self) -> dict | None:
        if self.val_data is None:
            return None
        val_emb = embed(self.model, self.modality, self.val_data, self.device)
        return {"loss": split_loss(self.loss_fn, val_emb.to(self.device), self.val_data.labels.to(self.device),
                                   self.cfg.train.batch_size)}


def _optimizer(cfg: MetricRunConfig, model: nn.Module, loss_fn: nn.Module) -> tuple[torch.optim.Optimizer, list]:
    """AdamW over the tower, plus the loss's own parameters (ArcFace's class centres W) at metric.loss_lr."""
    optimizer = build_optimizer(model, cfg.train)
    loss_params = [p for p in loss_fn.parameters() if p.requires_grad]
    if loss_params:
        optimizer.add_param_group({"params": loss_params, "lr": cfg.metric.loss_lr or cfg.train.lr,
                                   "weight_decay": 0.0})
    return optimizer, loss_params


@fresh_or_resumed
def train_metric(cfg: MetricRunConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> Path:
    """Train one tower with the configured PML loss/miner, evaluate k-NN accuracy; returns the run folder."""
    modality = cfg.metric.modality or cfg.data.modalities[0]
    cfg = cfg.model_copy(update={"data": cfg.data.model_copy(update={"modalities": [modality]})})
    t_start = time.time()
    cfg, init = init_towers(cfg, resume)
    run_dir = start_run(cfg, resume, overwrite)
    device = resolve_device(cfg.train.device)
    if cfg.train.accum_steps != 1:
        raise UsageError("train.accum_steps: metric learning mines within a batch; use 1")
    _info, train_data, val_data, test_data = load_splits(cfg, resumed_prep(cfg, resume))
    kinds = train_data.kinds
    shape = tuple(train_data.inputs[modality].shape[1:])
    model = build_encoders(cfg.model, kinds, train_data.prep, cfg.model.embed_dim, init=init).to(device)
    loss_fn, miner = build_metric_loss(cfg.metric, cfg.model.embed_dim, n_classes_of(train_data))
    obj = MetricObjective(cfg, modality, model, loss_fn.to(device), miner, train_data, val_data, device)
    n_params = count_parameters(model)
    if not resume:
        write_run_info(run_dir, MetricInfo(task="metric", modality=modality, kinds=kinds,
                                        prep=train_data.prep.to_json(), class_names=train_data.class_names,
                                        input_shape=list(shape), data_path=cfg.data.path, n_params=n_params,
                                        skipped=skipped(train=train_data, val=val_data, test=test_data)))
    optimizer, loss_params = _optimizer(cfg, model, loss_fn)
    plan = plan_of(cfg.train, steps_or_fail(len(train_data), cfg.train.batch_size))
    scheduler = build_scheduler(optimizer, cfg.train, plan.total_steps)
    print(f"run {run_dir}: metric learning of {modality} with {type(loss_fn).__name__}"
          f"{' + ' + type(miner).__name__ if miner else ''}, {n_params:,} parameters "
          f"(+{sum(p.numel() for p in loss_params):,} in the loss), device {device}")
    with PeakMemory(device) as memory:
        fitted = fit(obj, optimizer, scheduler, plan, run_dir, tracker_of(cfg, run_dir), device, resume, show_progress)
    save_weights(obj.module.state_dict(), RunDir(run_dir).weights, RunDir(run_dir).checkpoints)
    result = _evaluate(cfg, run_dir, obj, test_data)
    summary = {"task": "metric", "name": cfg.name, "seed": cfg.seed, "loss": cfg.metric.loss.name,
               "miner": cfg.metric.miner.name if cfg.metric.miner else None,
               "test_accuracy": result[f"knn{cfg.metric.knn_k}_accuracy"], **result,
               "val_loss": fitted.last_val.get("loss"), "n_params": n_params, "epochs": cfg.train.epochs,
               "seconds_per_epoch": round(fitted.train_seconds / max(fitted.epochs_run, 1e-9), 3), **memory.result(),
               "wall_seconds": round(time.time() - t_start, 1)}
    write_done(run_dir, summary)
    return run_dir


def _evaluate(cfg: MetricRunConfig, run_dir: Path, obj: MetricObjective, test_data: SplitData) -> dict:
    """k-NN metrics of the test split against the train split; its embeddings and UMAP in the run folder."""
    model, modality, train_data, device = obj.model, obj.modality, obj.train_data, obj.device
    train_emb = F.normalize(embed(model, modality, train_data, device), dim=-1)
    test_emb = F.normalize(embed(model, modality, test_data, device), dim=-1)
    result = knn_metrics(train_emb, train_data.labels, test_emb, test_data.labels, cfg.metric.knn_k)
    run = RunDir(run_dir)
    run.embeddings(cfg.eval.split).parent.mkdir(exist_ok=True)
    np.savez_compressed(run.embeddings(cfg.eval.split),
                        **{f"emb_{modality}": test_emb.numpy()}, labels=test_data.labels.numpy(),
                        class_names=np.array(test_data.class_names), kinds=np.array(json.dumps(test_data.kinds)))
    if cfg.metric.plot != "none":
        from jointspace.viz.plots import plot_umap

        plot_umap({modality: test_emb.numpy()}, test_data.labels.numpy(), test_data.class_names,
                  run.plots / f"{cfg.metric.plot}_{cfg.eval.split}.png", seed=cfg.seed,
                  method=cfg.metric.plot)
    run.write_eval({"split": cfg.eval.split, "n_samples": len(test_data), "modality": modality, **result})
    return result


TASK = Task("metric", MetricRunConfig, train_metric, done_line, verbs=("report",),
            results=f"{EVAL} and {EVAL_DIR}/embeddings_<split>.npz", val_metrics=("loss",),
            measure="k-NN accuracy of test embeddings against train embeddings", info=MetricInfo)
