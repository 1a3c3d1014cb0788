"""A finished contrastive run's done.json for `jointspace compare`: its evaluation's headline numbers and
what training cost."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from jointspace.config import load_config
from jointspace.evaluate.runner import evaluate_run
from jointspace.model import count_parameters
from jointspace.run_dir import RunDir
from jointspace.runs import load_run
from jointspace.tasks.common import write_done


def summarise(run_dir: Path) -> dict:
    """Evaluate a finished run and write its done.json for `jointspace compare`: test_accuracy is the
    mean class-level R@1 over the evaluated pairs, zero_shot_top1 and linear_probe the means over the
    modalities eval scored (when it did); peak memory (as classify's) and wall_seconds (training + this
    evaluation) come from the training summary."""
    t_eval = time.time()
    ev, run = evaluate_run(run_dir), RunDir(run_dir)
    r1 = [m["R@1"] for m in ev["retrieval"].values()]
    vals = [r["loss"] for r in run.read_metrics() if r.get("split") == "val"]
    train_info = run.read_train_summary()
    cfg = load_config(run.config)
    zero_shot = [r["top1"] for r in ev.get("zero_shot", {}).values()]
    probe = list(ev.get("linear_probe", {}).values())
    summary = {"task": "contrastive", "name": cfg.name, "seed": cfg.seed, "test_accuracy": float(np.mean(r1)),
               "headline": "mean R@1", "val_loss": vals[-1] if vals else None,
               "zero_shot_top1": float(np.mean(zero_shot)) if zero_shot else None,
               "linear_probe": float(np.mean(probe)) if probe else None,
               "n_params": count_parameters(load_run(run_dir)[1]), "epochs": cfg.train.epochs,
               "seconds_per_epoch": round(train_info["seconds"] / max(train_info.get("epochs_run", 0), 1e-9), 3),
               **{k: train_info[k] for k in ("peak_mem_mb", "rss_rise_mb", "peak_rss_mb", "cuda_peak_mb")
                  if k in train_info}}
    if "wall_seconds" in train_info:
        summary["wall_seconds"] = round(train_info["wall_seconds"] + time.time() - t_eval, 1)
    write_done(run_dir, summary)
    return summary
