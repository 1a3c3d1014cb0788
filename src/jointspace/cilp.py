"""CILP (contrastive image-LiDAR pretraining), then classify from the image alone.

1. Contrastive pretraining of image <-> LiDAR towers (the ordinary `train.loop.train`, modalities
   [source, target]).
2. A projector (MLP) from the frozen source (RGB) embedding to the frozen target (LiDAR) embedding,
   trained with MSE.
3. A classifier trained on target (LiDAR) embeddings, evaluated on projected source embeddings:
   at test time only the RGB image is used (image tower -> projector -> LiDAR classifier).

Run folder `<output_dir>/<name>/`: `pretrain/` (a normal run folder), `projector.safetensors`,
`classifier.safetensors`, `classification_test_projected.json/.txt`, `plots/`, `cilp.json` and
`cilp.md` (the seed's table: validation loss, projector MSE, classifier accuracy).
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from jointspace.config import RunConfig, TrainConfig
from jointspace.data.dataset import epoch_batches
from jointspace.evaluate.classifier_report import classification_summary
from jointspace.evaluate.embed import embed_split
from jointspace.runs import load_run, resolve_device
from jointspace.train.checkpoint import save_tensors
from jointspace.train.common import load_splits, n_classes_of, write_done
from jointspace.train.loop import seed_everything, train
from jointspace.train.optim import build_optimizer, build_scheduler

PRETRAIN = "pretrain"


def mlp(in_dim: int, hidden: int, out_dim: int) -> nn.Module:
    """Linear when hidden == 0, else Linear-GELU-Linear."""
    if hidden <= 0:
        return nn.Linear(in_dim, out_dim)
    return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Linear(hidden, out_dim))


def fit(module: nn.Module, x: torch.Tensor, y: torch.Tensor, loss_fn, tcfg: TrainConfig,
        seed: int) -> list[float]:
    """Train `module` on in-memory (x, y) with AdamW + warmup/cosine; returns the mean loss of each epoch."""
    torch.manual_seed(seed)
    bs = min(tcfg.batch_size, len(x))
    steps = (len(x) // bs) * tcfg.epochs
    optimizer = build_optimizer(module, tcfg)
    scheduler = build_scheduler(optimizer, tcfg, steps)
    history = []
    module.train()
    for epoch in range(tcfg.epochs):
        losses = []
        for idx in epoch_batches(len(x), bs, seed, epoch):
            optimizer.zero_grad(set_to_none=True)
            loss = loss_fn(module(x[idx]), y[idx])
            loss.backward()
            optimizer.step()
            scheduler.step()
            losses.append(float(loss.detach()))
        history.append(sum(losses) / len(losses))
    module.eval()
    return history


def _last_val_loss(run_dir: Path) -> float | None:
    vals = [json.loads(x) for x in (run_dir / "metrics.jsonl").read_text().splitlines()]
    vals = [r for r in vals if r.get("split") == "val"]
    return float(vals[-1]["loss"]) if vals else None


def pretrain_config(cfg: RunConfig) -> RunConfig:
    """Stage 1's config: this one with modalities [source, target], written under the CILP folder."""
    src, tgt = cfg.cilp.source, cfg.cilp.target
    return cfg.model_copy(update={"name": PRETRAIN, "output_dir": str(cfg.run_dir),
                                  "data": cfg.data.model_copy(update={"modalities": [src, tgt]})})


def run_cilp(cfg: RunConfig, overwrite: bool = False, show_progress: bool = True) -> dict:
    """Run the three CILP stages; returns (and writes to cilp.json) the table and details."""
    src, tgt, c = cfg.cilp.source, cfg.cilp.target, cfg.cilp
    root = cfg.run_dir
    if root.exists() and not overwrite:
        raise FileExistsError(f"{root} exists: pass --overwrite to replace it")
    pre_dir = train(pretrain_config(cfg), overwrite=overwrite, show_progress=show_progress)
    seed_everything(cfg.seed)
    device = resolve_device(cfg.train.device)
    _cfg, model, _info = load_run(pre_dir)
    model.to(device)
    pre_cfg = pretrain_config(cfg)
    _, train_data, val_data, test_data = load_splits(pre_cfg)
    emb = {name: embed_split(model, d, device=device) for name, d in
           (("train", train_data), ("val", val_data), ("test", test_data)) if d is not None}
    dim = emb["train"][src].shape[1]

    # 2) projector: frozen source embedding -> frozen target embedding, MSE
    head_cfg = TrainConfig(epochs=c.projector_epochs, batch_size=c.batch_size, lr=c.projector_lr,
                           weight_decay=c.weight_decay, warmup_steps=0, grad_clip=None)
    projector = mlp(dim, c.projector_hidden, dim)
    proj_hist = fit(projector, emb["train"][src], emb["train"][tgt], F.mse_loss, head_cfg, cfg.seed)
    with torch.no_grad():
        projected = {s: projector(e[src]) for s, e in emb.items()}
    mse = {s: float(F.mse_loss(projected[s], e[tgt])) for s, e in emb.items()}

    # 3) classifier trained on target embeddings, applied to projected source embeddings
    n_classes = n_classes_of(train_data)
    cls_cfg = head_cfg.model_copy(update={"epochs": c.classifier_epochs, "lr": c.classifier_lr})
    classifier = mlp(dim, c.classifier_hidden, n_classes)
    cls_hist = fit(classifier, emb["train"][tgt], train_data.labels, F.cross_entropy, cls_cfg, cfg.seed)
    names = test_data.class_names
    with torch.no_grad():
        on_projected = classification_summary(classifier(projected["test"]), test_data.labels, names, root,
                                              "test_projected")
        on_target = classification_summary(classifier(emb["test"][tgt]), test_data.labels, names, root,
                                           f"test_{tgt}", plot=False)
    save_tensors(projector.state_dict(), root / "projector.safetensors")
    save_tensors(classifier.state_dict(), root / "classifier.safetensors")
    table = {"seed": cfg.seed, "val_loss": _last_val_loss(pre_dir), "projector_mse": mse["test"],
             "classifier_accuracy": on_projected["top1"]}
    val_acc = None
    if "val" in projected:  # for choosing settings without looking at the test split
        with torch.no_grad():
            val_acc = float((classifier(projected["val"]).argmax(1) == val_data.labels).float().mean())
    result = {"table": table, "source": src, "target": tgt, "projector_mse": mse,
              f"classifier_accuracy_on_{tgt}": on_target["top1"], "classifier_accuracy_val": val_acc,
              "projector_loss_history": proj_hist, "classifier_loss_history": cls_hist,
              "pretrain_run": str(pre_dir)}
    (root / "cilp.json").write_text(json.dumps(result, indent=2))
    (root / "cilp.md").write_text(cilp_table([table]) + "\n")
    write_done(root, table)
    return result


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
