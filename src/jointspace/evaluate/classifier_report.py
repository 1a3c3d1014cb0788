"""Everything written about a classifier's predictions on a split: top-k accuracy, confusion matrix
(JSON + PNG) and sklearn's per-class precision / recall / F1 report."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from jointspace.evaluate.classify import confusion_matrix, topk_accuracy
from jointspace.run_dir import RunDir


def classification_summary(logits: torch.Tensor, labels: torch.Tensor, class_names: Sequence[str],
                           out_dir: Path, split: str = "test", ks: Sequence[int] = (1, 2),
                           plot: bool = True) -> dict:
    """Metrics of logits [N, C] against labels [N]; writes `classification_<split>.json/.txt` and
    `plots/confusion_<split>.png` under `out_dir`, returns the metrics dict."""
    from sklearn.metrics import classification_report

    n_classes = logits.shape[1]
    names = [str(c) for c in class_names]
    if len(names) != n_classes:
        names = [str(i) for i in range(n_classes)]
    preds = logits.argmax(dim=1)
    cm = confusion_matrix(preds, labels, n_classes)
    y_true, y_pred = labels.numpy(), preds.numpy()
    report_kw = {"labels": list(range(n_classes)), "target_names": names, "digits": 4, "zero_division": 0}
    report = classification_report(y_true, y_pred, output_dict=True, **report_kw)
    loss = float(torch.nn.functional.cross_entropy(logits.float(), labels))
    result = {"split": split, "n_samples": len(labels), "loss": loss,
              **topk_accuracy(logits, labels, [k for k in ks if k < n_classes] or [1]),
              "confusion_matrix": cm.tolist(), "class_names": names, "per_class": report}
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    RunDir(out_dir).classification(split).write_text(json.dumps(result, indent=2))
    RunDir(out_dir).classification(split, ".txt").write_text(
        f"top-1 accuracy {result['top1']:.4f} on {len(labels)} {split} samples\n\n"
        + classification_report(y_true, y_pred, **report_kw) + "\nconfusion matrix (rows = true):\n"
        + "\n".join(" ".join(f"{v:5d}" for v in row) for row in np.asarray(cm)) + "\n")
    if plot:
        from jointspace.viz.plots import plot_confusion

        plot_confusion(cm, names, RunDir(out_dir).plots / f"confusion_{split}.png",
                       title=f"{split}: top-1 {result['top1']:.3f}")
    return result
