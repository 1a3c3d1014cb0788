"""CILP (contrastive image-LiDAR pretraining), then classify from the image alone.

1. Contrastive pretraining of image <-> LiDAR towers (the contrastive task, modalities [source, target]).
2. A projector (MLP) from the frozen source (RGB) embedding to the frozen target (LiDAR) embedding,
   trained with MSE.
3. A classifier trained on target (LiDAR) embeddings, evaluated on projected source embeddings:
   at test time only the RGB image is used (image tower -> projector -> LiDAR classifier).

Every stage is trained by the engine in a folder of its own and resumes exactly; a finished stage is kept.
Run folder `<output_dir>/<name>/`: `pretrain/` (a normal run folder), `projector/` and `classifier/`
(stage folders with checkpoints), `projector.safetensors`,
`classifier.safetensors`, `classification_test_projected.json/.txt`, `plots/`, `cilp.json` and
`cilp.md` (the seed's table: validation loss, projector MSE, classifier accuracy).
"""

from __future__ import annotations

import itertools
import json
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field
from safetensors.torch import load_file
from torch import nn

from jointspace.config import RunConfig, TrainConfig, _Strict, save_config
from jointspace.data.dataset import epoch_batches
from jointspace.engine import Objective, StepContext, fit, seed_everything
from jointspace.engine.checkpoint import save_weights
from jointspace.engine.optim import build_optimizer, build_scheduler
from jointspace.engine.tracking import Tracker
from jointspace.evaluate.classifier_report import classification_summary
from jointspace.evaluate.embed import embed_split
from jointspace.run_dir import RunDir
from jointspace.runs import load_run, resolve_device
from jointspace.tasks.common import load_splits, n_classes_of, plan_of, read_done, write_done
from jointspace.tasks.contrastive import train
from jointspace.tasks.lifecycle import has_checkpoint, keeping_old_run, train_stage
from jointspace.tasks.registry import Task

PRETRAIN, PROJECTOR, CLASSIFIER = "pretrain", "projector", "classifier"
CILP_JSON = "cilp.json"  # the CILP folder's results (its table and details)


class CILPConfig(_Strict):
    """CILP stages after contrastive pretraining: projector source->target (MSE), classifier on target."""

    source: str = "image"
    target: str = "lidar"
    projector_hidden: int = Field(512, ge=1)
    projector_epochs: int = Field(200, ge=1)
    projector_lr: float = Field(3e-3, gt=0.0)
    classifier_hidden: int = Field(256, ge=0)  # 0: linear classifier on the target embedding
    classifier_epochs: int = Field(200, ge=1)
    classifier_lr: float = Field(3e-3, gt=0.0)
    batch_size: int = Field(128, ge=2)
    weight_decay: float = Field(1e-4, ge=0.0)


class CILPRunConfig(RunConfig):
    """A CILP run's config: the common sections (its contrastive pretraining) and `cilp:` (the heads)."""

    task: Literal["cilp"] = "cilp"
    cilp: CILPConfig = Field(default_factory=CILPConfig)


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """Linear when hidden == 0, else Linear-GELU-Linear."""
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


class HeadObjective(Objective):
    """A small head on in-memory (x, y): projector (MSE) or classifier (cross-entropy)."""

    def __init__(self, module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, batch_size: int, seed: int):
        self.module, self.x, self.y, self.loss_fn, self.batch_size, self.seed = module, x, y, loss_fn, batch_size, seed

    def batches(self, epoch: int, skip: int):
        return itertools.islice(epoch_batches(len(self.x), self.batch_size, self.seed, epoch), skip, None)

    def loss(self, idx: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        return self.loss_fn(self.module(self.x[idx]), self.y[idx]), {}


def epoch_means(stage_dir: Path, steps_per_epoch: int) -> list[float]:
    """Mean training loss of each epoch, from a stage's metrics.jsonl (every step is logged)."""
    rows = RunDir(stage_dir).read_metrics()
    by_epoch: dict[int, list[float]] = {}
    for r in rows:
        by_epoch.setdefault((r["step"] - 1) // steps_per_epoch, []).append(r["loss"])
    return [float(np.mean(v)) for _, v in sorted(by_epoch.items())]


def fit_head(stage_dir: Path, module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, tcfg: TrainConfig,
             seed: int, resume: bool, show_progress: bool = False) -> list[float]:
    """Train a head by the engine in its own stage folder (resumable; a finished stage is loaded, not
    retrained); returns the mean loss of each epoch."""
    torch.manual_seed(seed)
    if read_done(stage_dir) is not None:
        module.load_state_dict(load_file(str(RunDir(stage_dir).weights)))
        return read_done(stage_dir)["history"]
    resume = resume and has_checkpoint(stage_dir)
    if not resume:  # a stage folder of this CILP folder's own, not finished: started afresh
        RunDir(stage_dir).start_afresh()
    bs = min(tcfg.batch_size, len(x))
    obj = HeadObjective(module, x, y, loss_fn, bs, seed)
    plan = plan_of(tcfg, len(x) // bs, log_every=1, checkpoint_every=max(1, tcfg.epochs // 4), keep_checkpoints=2)
    optimizer = build_optimizer(module, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, plan.total_steps)
    fit(obj, optimizer, scheduler, plan, stage_dir, Tracker(stage_dir, "none"), torch.device("cpu"), resume,
        show_progress)
    module.eval()
    history = epoch_means(stage_dir, plan.steps_per_epoch)
    save_weights(module.state_dict(), RunDir(stage_dir).weights, RunDir(stage_dir).checkpoints)
    write_done(stage_dir, {"history": history})
    return history


def _last_val_loss(run_dir: Path) -> float | None:
    vals = [r for r in RunDir(run_dir).read_metrics() if r.get("split") == "val"]
    return float(vals[-1]["loss"]) if vals else None


def pretrain_config(cfg: CILPRunConfig) -> CILPRunConfig:
    """Stage 1's config: this one with modalities [source, target], written under the CILP folder."""
    src, tgt = cfg.cilp.source, cfg.cilp.target
    return cfg.model_copy(update={"name": PRETRAIN, "output_dir": str(cfg.run_dir),
                                  "data": cfg.data.model_copy(update={"modalities": [src, tgt]})})


def _pretrain(cfg: CILPRunConfig, resume: bool, show_progress: bool) -> Path:
    """Stage 1 (kept when finished, resumed when asked and a checkpoint exists)."""
    pre_cfg = pretrain_config(cfg)
    pre_dir = pre_cfg.run_dir
    if RunDir(pre_dir).weights.exists():
        return pre_dir
    return train_stage(train, pre_cfg, resume, show_progress)


def _heads(cfg: CILPRunConfig, emb: dict, train_labels: torch.Tensor, n_classes: int, resume: bool) -> tuple:
    """Stages 2 and 3: projector source -> target (MSE), classifier on target embeddings."""
    src, tgt, c, root = cfg.cilp.source, cfg.cilp.target, cfg.cilp, cfg.run_dir
    dim = emb["train"][src].shape[1]
    head_cfg = TrainConfig(epochs=c.projector_epochs, batch_size=c.batch_size, lr=c.projector_lr,
                           weight_decay=c.weight_decay, warmup_steps=0, grad_clip=None)
    projector = mlp(dim, c.projector_hidden, dim)
    proj_hist = fit_head(root / PROJECTOR, projector, emb["train"][src], emb["train"][tgt], F.mse_loss, head_cfg,
                         cfg.seed, resume)
    cls_cfg = head_cfg.model_copy(update={"epochs": c.classifier_epochs, "lr": c.classifier_lr})
    classifier = mlp(dim, c.classifier_hidden, n_classes)
    cls_hist = fit_head(root / CLASSIFIER, classifier, emb["train"][tgt], train_labels, F.cross_entropy, cls_cfg,
                        cfg.seed, resume)
    return projector, classifier, proj_hist, cls_hist


def run_cilp(cfg: CILPRunConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> dict:
    """Run the three CILP stages (each resumable); returns (and writes to cilp.json) the table and details."""
    src, tgt, root = cfg.cilp.source, cfg.cilp.target, cfg.run_dir
    run = RunDir(root).create(resume, overwrite)
    save_config(cfg, run.config)  # what `jointspace compare` compares a finished grid run against
    pre_dir = _pretrain(cfg, resume, show_progress)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)
    _cfg, model, _info = load_run(pre_dir)
    model.to(device)
    _, train_data, val_data, test_data = load_splits(pretrain_config(cfg))
    emb = {name: embed_split(model, d, device=device) for name, d in
           (("train", train_data), ("val", val_data), ("test", test_data)) if d is not None}
    projector, classifier, proj_hist, cls_hist = _heads(cfg, emb, train_data.labels, n_classes_of(train_data), resume)
    with torch.no_grad():
        projected = {s: projector(e[src]) for s, e in emb.items()}
    mse = {s: float(F.mse_loss(projected[s], e[tgt])) for s, e in emb.items()}
    names = test_data.class_names
    with torch.no_grad():
        on_projected = classification_summary(classifier(projected["test"]), test_data.labels, names, root,
                                              "test_projected")
        on_target = classification_summary(classifier(emb["test"][tgt]), test_data.labels, names, root,
                                           f"test_{tgt}", plot=False)
        val_acc = (float((classifier(projected["val"]).argmax(1) == val_data.labels).float().mean())
                   if "val" in projected else None)  # for choosing settings without looking at the test split
    save_weights(projector.state_dict(), root / "projector.safetensors")
    save_weights(classifier.state_dict(), root / "classifier.safetensors")
    table = {"seed": cfg.seed, "val_loss": _last_val_loss(pre_dir), "projector_mse": mse["test"],
             "classifier_accuracy": on_projected["top1"]}
    result = {"table": table, "source": src, "target": tgt, "projector_mse": mse,
              f"classifier_accuracy_on_{tgt}": on_target["top1"], "classifier_accuracy_val": val_acc,
              "projector_loss_history": proj_hist, "classifier_loss_history": cls_hist,
              "pretrain_run": str(pre_dir)}
    (root / CILP_JSON).write_text(json.dumps(result, indent=2))
    (root / "cilp.md").write_text(cilp_table([table]) + "\n")
    write_done(root, {"task": "cilp", "name": cfg.name, **table, "test_accuracy": table["classifier_accuracy"],
                      "epochs": cfg.train.epochs})
    return result


def train_cilp(cfg: CILPRunConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> Path:
    """`jointspace train` for `task: cilp`: the three stages; returns the CILP folder (an old one replaced
    with `overwrite` comes back if the new one fails before its first checkpoint)."""
    with keeping_old_run(cfg.run_dir, resume, overwrite):
        run_cilp(cfg, resume, overwrite, show_progress)
    return cfg.run_dir


def cilp_table(rows: list[dict]) -> str:
    """Markdown table, one row per seed: validation loss, projector MSE (test), classifier accuracy (test)."""
    header = "| seed | validation loss (contrastive) | projector MSE (test) | classifier accuracy, RGB only |"
    lines = [header, "|---:|---:|---:|---:|"]
    for r in rows:
        val = "n/a" if r["val_loss"] is None else f"{r['val_loss']:.4f}"
        lines.append(f"| {r['seed']} | {val} | {r['projector_mse']:.5f} | {r['classifier_accuracy']:.4f} |")
    if len(rows) > 1:
        def ms(key: str, digits: int) -> str:
            vals = np.array([r[key] for r in rows if r[key] is not None], dtype=float)
            return f"{vals.mean():.{digits}f} ± {vals.std(ddof=1):.{digits}f}" if len(vals) > 1 else "n/a"

        lines.append(f"| mean ± std | {ms('val_loss', 4)} | {ms('projector_mse', 5)} "
                     f"| {ms('classifier_accuracy', 4)} |")
    return "\n".join(lines)


TASK = Task("cilp", CILPRunConfig, train_cilp, lambda d: cilp_table([read_done(d)]),
            results=f"cilp.md and {CILP_JSON}; its contrastive stage is the run RUN/{PRETRAIN}",
            measure="top-1 of the target-embedding classifier on projected source embeddings")
