"""The classify task: a fusion classifier (cross-entropy) trained by the engine; test top-k, confusion
matrix and per-class report."""

from __future__ import annotations

import itertools
import time
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from pydantic import Field, model_validator
from safetensors.torch import load_file

from jointspace.audit.space import audited_splits
from jointspace.config import CONTRASTIVE_ONLY, RunConfig, refuse_unread
from jointspace.data.dataset import SplitData
from jointspace.data.sources import TrainSampler, shards_arg
from jointspace.engine import Objective, StepContext, autocast, fit
from jointspace.engine.checkpoint import save_weights
from jointspace.engine.optim import build_optimizer, build_scheduler
from jointspace.evaluate.classifier_report import classification_summary
from jointspace.fusion import FusionClassifier, FusionConfig, build_fusion
from jointspace.model import count_parameters
from jointspace.run_dir import EVAL, RunDir, RunInfo, write_run_info
from jointspace.runs import load_run_split, resolve_device
from jointspace.tasks.common import (
    PeakMemory,
    done_line,
    epochs_to_fraction,
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
from jointspace.tasks.registry import ClassPredictions, Task, run_config


class ClassifyInfo(RunInfo):
    """A classifier run's run.json: each modality's input shape (one sample) and its parameter count."""

    input_shapes: dict[str, list[int]] = Field(default_factory=dict)
    n_params: int | None = None


class ClassifyRunConfig(RunConfig):
    """A classify run's config: the common sections and `fusion:` (the classifier)."""

    task: Literal["classify"] = "classify"
    fusion: FusionConfig = Field(default_factory=FusionConfig)

    @model_validator(mode="after")
    def _reads_its_fields(self) -> ClassifyRunConfig:
        refuse_unread(self, CONTRASTIVE_ONLY)
        return self


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


def build_classifier(cfg: ClassifyRunConfig, data: SplitData, init: dict | None = None) -> FusionClassifier:
    """The configured fusion classifier for the modalities and input shapes of `data` (towers started
    from `init`, see tasks.init_from.resolve_init)."""
    shapes = {m: tuple(data.inputs[m].shape[1:]) for m in data.kinds}
    return build_fusion(cfg.fusion, cfg.model, data.kinds, shapes, n_classes_of(data), data.prep, init)


class ClassifyObjective(Objective):
    """Cross-entropy (with label smoothing) of a fusion classifier; validation loss and accuracy."""

    def __init__(self, cfg: ClassifyRunConfig, model: FusionClassifier, train_data: SplitData, val_data: SplitData | None,
                 device: torch.device):
        self.cfg, self.module, self.train_data, self.val_data, self.device = cfg, model, train_data, val_data, device
        self.sampler = TrainSampler.from_config(cfg.data, train_data)  # data.sources weights with data.resampled

    def batches(self, epoch: int, skip: int):
        self.train_data.draw_variants(self.cfg.seed, epoch)
        return itertools.islice(self.sampler.batches(self.cfg.train.batch_size, self.cfg.seed, epoch), skip, None)

    def split(self, batch: torch.Tensor, n: int) -> list[torch.Tensor]:
        return list(batch.chunk(n))

    def size(self, batch: torch.Tensor) -> int:
        return len(batch)

    def loss(self, idx: torch.Tensor, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        batch = to_device(self.train_data.batch(idx), self.device)
        with ctx.autocast():
            logits = self.module(batch).float()
        return F.cross_entropy(logits, batch["label"], label_smoothing=self.cfg.fusion.label_smoothing), {}

    def validate(self) -> dict | None:
        if self.val_data is None:
            return None
        logits = predict(self.module, self.val_data, self.device, amp=self.cfg.train.amp)
        return {"loss": float(F.cross_entropy(logits, self.val_data.labels)),
                "accuracy": float((logits.argmax(1) == self.val_data.labels).float().mean())}


@fresh_or_resumed
def train_classifier(cfg: ClassifyRunConfig, resume: bool = False, overwrite: bool = False, show_progress: bool = True) -> Path:
    """Train the configured fusion classifier, evaluate it on `eval.split`; returns the run folder.

    The run folder gets config.yaml, run.json, metrics.jsonl, checkpoints/, model.safetensors,
    classification_<split>.json/.txt, plots/confusion_<split>.png and, last, done.json (the summary).
    """
    t_start = time.time()
    cfg, init = init_towers(cfg, resume)
    run_dir = start_run(cfg, resume, overwrite)
    device = resolve_device(cfg.train.device)
    _info, train_data, val_data, test_data = load_splits(cfg, resumed_prep(cfg, resume))
    model = build_classifier(cfg, train_data, init).to(device)
    n_params, kinds = count_parameters(model), train_data.kinds
    if not resume:
        write_run_info(run_dir, ClassifyInfo(task="classify", kinds=kinds, prep=train_data.prep.to_json(),
                                        class_names=train_data.class_names,
                                        input_shapes={m: list(train_data.inputs[m].shape[1:]) for m in kinds},
                                        data_path=cfg.data.path, n_params=n_params,
                                        skipped=skipped(train=train_data, val=val_data, test=test_data),
                                        **({"init_from": init["sources"]} if init else {})))
    obj = ClassifyObjective(cfg, model, train_data, val_data, device)
    plan = plan_of(cfg.train, steps_or_fail(obj.sampler.n_samples, cfg.train.batch_size))
    optimizer = build_optimizer(model, cfg.train)
    scheduler = build_scheduler(optimizer, cfg.train, plan.total_steps)
    print(f"run {run_dir}: {cfg.fusion.strategy} fusion of {list(kinds)}, {len(train_data)} train samples, "
          f"{n_params:,} parameters, device {device}")
    with PeakMemory(device) as memory:
        result = fit(obj, optimizer, scheduler, plan, run_dir, tracker_of(cfg, run_dir), device, resume, show_progress)
    save_weights(model.state_dict(), RunDir(run_dir).weights, RunDir(run_dir).checkpoints)
    test = classification_summary(predict(model, test_data, device, amp=cfg.train.amp), test_data.labels,
                                  test_data.class_names, run_dir, cfg.eval.split, ks=(1, 2, 3, 5))
    summary = {"task": "classify", "name": cfg.name, "seed": cfg.seed, "fusion": cfg.fusion.strategy,
               "test_accuracy": test["top1"], "test_top3": test.get("top3"), "test_loss": test["loss"],
               "val_loss": result.last_val.get("loss"), "val_accuracy": result.last_val.get("accuracy"),
               "n_params": n_params, "trainable_params": count_parameters(model, trainable_only=True),
               "epochs": cfg.train.epochs, "epochs_to_95": epochs_to_fraction(run_dir),
               "seconds_per_epoch": round(result.train_seconds / max(result.epochs_run, 1e-9), 3), **memory.result(),
               "wall_seconds": round(time.time() - t_start, 1)}
    RunDir(run_dir).write_eval({"split": cfg.eval.split, **test})
    write_done(run_dir, summary)
    return run_dir


def _logits(run_dir: Path, source, split: str, keep_raw: bool = False, device: str = "cpu"
            ) -> tuple[SplitData, torch.Tensor]:
    """A split of `source` (default: the run's data) prepared as the run's, and the finished classifier's logits
    (computed on `device`, returned on the CPU)."""
    run, cfg = RunDir(run_dir), run_config(run_dir)
    data = load_run_split(cfg, run.read_info(), source or cfg.data.path, split, keep_raw=keep_raw)
    model = build_classifier(cfg, data)
    model.load_state_dict(load_file(str(run.weights)))
    dev = resolve_device(device)
    return data, predict(model.to(dev), data, dev)


def classifier_predictions(run_dir: Path, split: str) -> ClassPredictions:
    """The finished classifier's predicted class of every sample of a split prepared as the run's."""
    data, logits = _logits(run_dir, None, split)
    return ClassPredictions(logits.argmax(1), data.labels, data.class_names, "prediction", "accuracy")


def classifier_probabilities(run_dir: Path, shards: str | Path, splits: list[str] | None, device: str = "auto"
                             ) -> list[tuple[str, SplitData, np.ndarray]]:
    """`jointspace audit` of a classify run: per split of `shards` (default: every split it has), the split
    prepared as the run's with its values, and the classifier's class probabilities (softmax) [N, C]."""
    source = shards_arg(shards, run_config(run_dir).data)
    out = []
    for split in audited_splits(source, shards, splits):
        data, logits = _logits(run_dir, source, split, keep_raw=True, device=device)
        out.append((split, data, torch.softmax(logits.double(), dim=1).numpy()))
    return out


def summary_text(run_dir: Path) -> str:
    """The classification report of the evaluated split and the done line."""
    run = RunDir(run_dir)
    split = run.read_eval().get("split", "test")
    return run.classification(split, ".txt").read_text() + "\n" + done_line(run_dir)


TASK = Task("classify", ClassifyRunConfig, train_classifier, summary_text, val_metrics=("loss", "accuracy"),
            results=f"{EVAL} and classification_<split>.txt (written when it trained)",
            measure="top-1 of the classifier", predictions=classifier_predictions, info=ClassifyInfo,
            class_probabilities=classifier_probabilities)
