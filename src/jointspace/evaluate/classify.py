"""Classification evaluation of embeddings: top-k accuracy, zero-shot, linear probe, confusion matrix."""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch.nn.functional as F
from torch import Tensor

from jointspace.errors import UsageError

__all__ = ["confusion_matrix", "linear_probe", "topk_accuracy", "zero_shot_classify"]

ArrayLike = Tensor | np.ndarray


def _to_numpy(x: ArrayLike) -> np.ndarray:
    """Numpy view/copy of a tensor or array."""
    if isinstance(x, Tensor):
        return x.detach().cpu().numpy()
    return np.asarray(x)


def topk_accuracy(logits: Tensor, labels: Tensor, ks: Sequence[int] = (1, 5)) -> dict[str, float]:
    """Fraction of rows [N, C] whose true label [N] is among the k highest logits, keyed "top{k}".

    k is clipped to the number of classes C (so "top5" with 3 classes is 1.0).
    """
    if logits.ndim != 2 or labels.shape != (logits.shape[0],):
        raise UsageError(
            f"expected logits [N, C] and labels [N], got {tuple(logits.shape)}, {tuple(labels.shape)}"
        )
    n_classes = logits.shape[1]
    k_max = min(max(ks), n_classes)
    top_idx = logits.topk(k_max, dim=1).indices  # [N, k_max]
    hit = top_idx == labels.to(logits.device).unsqueeze(1)  # [N, k_max]
    return {f"top{k}": float(hit[:, : min(k, n_classes)].any(dim=1).double().mean()) for k in ks}


def zero_shot_classify(
    emb: Tensor,
    class_emb: Tensor,
    labels: Tensor,
    ks: Sequence[int] = (1, 5),
    return_preds: bool = False,
) -> dict[str, float] | tuple[dict[str, float], Tensor]:
    """Top-k accuracy of classifying emb [N, D] by similarity to class embeddings [C, D].

    class_emb is L2-normalised here; logits = emb @ class_emb.T. With ``return_preds`` also returns the
    top-1 predictions [N].
    """
    class_emb = F.normalize(class_emb.to(device=emb.device, dtype=emb.dtype), dim=-1)
    logits = emb @ class_emb.T  # [N, C]
    metrics = topk_accuracy(logits, labels, ks)
    if return_preds:
        return metrics, logits.argmax(dim=1)
    return metrics


def linear_probe(
    train_x: ArrayLike,
    train_y: ArrayLike,
    test_x: ArrayLike,
    test_y: ArrayLike,
    max_iter: int = 1000,
    C: float = 1.0,
) -> float:
    """Test accuracy of a standardised logistic-regression probe fit on train features [N, D]."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.pipeline import make_pipeline
    from sklearn.preprocessing import StandardScaler

    probe = make_pipeline(StandardScaler(), LogisticRegression(max_iter=max_iter, C=C))
    probe.fit(_to_numpy(train_x), _to_numpy(train_y))
    return float(probe.score(_to_numpy(test_x), _to_numpy(test_y)))


def confusion_matrix(preds: ArrayLike, labels: ArrayLike, n_classes: int) -> np.ndarray:
    """Integer counts [n_classes, n_classes]; entry [t, p] counts items of true class t predicted as p."""
    preds_np = _to_numpy(preds).astype(np.int64).ravel()
    labels_np = _to_numpy(labels).astype(np.int64).ravel()
    if preds_np.shape != labels_np.shape:
        raise UsageError(f"preds and labels differ in length: {preds_np.size} vs {labels_np.size}")
    for name, arr in (("preds", preds_np), ("labels", labels_np)):
        if arr.size and (arr.min() < 0 or arr.max() >= n_classes):
            raise UsageError(f"{name} must lie in [0, {n_classes})")
    flat = np.bincount(labels_np * n_classes + preds_np, minlength=n_classes * n_classes)
    return flat.reshape(n_classes, n_classes).astype(np.int64)
