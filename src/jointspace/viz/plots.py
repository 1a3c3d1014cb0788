"""Matplotlib figures for training curves, embedding maps, retrieval grids and confusion matrices."""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
from matplotlib.lines import Line2D

from jointspace.kinds import get_kind

MARKERS = ["o", "s", "^", "D", "P", "X", "v", "*"]
GOOD, BAD = "#1a9641", "#d7191c"
UMAP_MIN_POINTS = 15


def _save(fig: plt.Figure, out: Path | str, extra: Sequence = ()) -> Path:
    """Save a figure as PNG (extra: artists outside the axes to keep), creating parent dirs, and close it."""
    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out, dpi=110, bbox_inches="tight", bbox_extra_artists=list(extra) or None)
    plt.close(fig)
    return out


def _series(records: Sequence[dict], split: str, key: str) -> tuple[list[float], list[float]]:
    """Return (steps, values) of a numeric key for records of one split."""
    xs, ys = [], []
    for r in records:
        v = r.get(key)
        if r.get("split") == split and isinstance(v, (int, float)) and "step" in r:
            xs.append(float(r["step"]))
            ys.append(float(v))
    return xs, ys


def plot_curves(records: list[dict], out: Path) -> Path:
    """Plot train/val loss, val R@1, learning rate and temperature against step as subplots."""
    panels: list[tuple[str, list[tuple[str, list[float], list[float]]]]] = []
    loss = [(s, *_series(records, s, "loss")) for s in ("train", "val")]
    loss = [c for c in loss if c[1]]
    if loss:
        panels.append(("loss", loss))
    r1_keys = sorted({k for r in records if r.get("split") == "val" for k in r if k.endswith("/R@1")})
    r1 = [(k.removesuffix("/R@1"), *_series(records, "val", k)) for k in r1_keys]
    if r1:
        panels.append(("val R@1", r1))
    for key in ("lr", "temperature"):
        c = [(key, *_series(records, "train", key))]
        if c[0][1]:
            panels.append((key, c))
    if not panels:
        fig, ax = plt.subplots(figsize=(5, 2))
        ax.text(0.5, 0.5, "no metrics recorded", ha="center", va="center")
        ax.axis("off")
        return _save(fig, out)
    ncols = min(2, len(panels))
    nrows = (len(panels) + ncols - 1) // ncols
    fig, axes = plt.subplots(nrows, ncols, figsize=(5.5 * ncols, 3.4 * nrows), squeeze=False)
    for ax, (title, curves) in zip(axes.flat, panels):
        for name, xs, ys in curves:
            ax.plot(xs, ys, marker="o" if len(xs) < 30 else None, ms=3, label=name)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        if title == "lr":
            ax.ticklabel_format(axis="y", style="sci", scilimits=(-3, 3))
        if len(curves) > 1 or title == "loss":
            ax.legend(fontsize=8)
    for ax in list(axes.flat)[len(panels) :]:
        ax.axis("off")
    fig.tight_layout()
    return _save(fig, out)


def pca_2d(x: np.ndarray) -> np.ndarray:
    """Project rows of x onto their first two principal components."""
    x = np.asarray(x, dtype=np.float64)
    x = x - x.mean(axis=0, keepdims=True)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    y = x @ vt[:2].T
    return np.pad(y, ((0, 0), (0, 2 - y.shape[1]))) if y.shape[1] < 2 else y


def project_2d(x: np.ndarray, method: str = "umap", seed: int = 0) -> np.ndarray:
    """Reduce x to 2-D with UMAP (cosine, 15 neighbours) or PCA; PCA for fewer than 15 points."""
    if method == "pca" or len(x) < UMAP_MIN_POINTS:
        return pca_2d(x)
    import umap  # slow import (numba); keep lazy

    reducer = umap.UMAP(n_neighbors=15, n_components=2, metric="cosine", random_state=seed, n_jobs=1)
    return np.asarray(reducer.fit_transform(np.asarray(x, dtype=np.float32)))


def plot_umap(
    emb: dict[str, np.ndarray],
    labels: np.ndarray,
    class_names: Sequence[str],
    out: Path,
    max_points: int = 2000,
    seed: int = 0,
    method: str = "umap",
) -> Path:
    """Plot one joint 2-D map of all modalities (colour = class, marker = modality)."""
    mods = list(emb)
    labels = np.asarray(labels)
    n = min(len(emb[m]) for m in mods)
    per_mod = max(1, max_points // max(1, len(mods)))
    idx = np.arange(n)
    if n > per_mod:
        idx = np.sort(np.random.default_rng(seed).choice(n, per_mod, replace=False))
    x = np.concatenate([emb[m][idx] for m in mods])
    y2 = project_2d(x, method=method, seed=seed)
    n_cls = max(len(class_names), int(labels.max()) + 1 if len(labels) else 1)
    cmap = plt.get_cmap("tab10" if n_cls <= 10 else "tab20" if n_cls <= 20 else "turbo")
    colours = [
        cmap(i / max(1, n_cls - 1)) if n_cls > 20 else cmap(_tab_order(i, n_cls)) for i in range(n_cls)
    ]
    fig, ax = plt.subplots(figsize=(8.5, 6.5))
    for j, m in enumerate(mods):
        pts = y2[j * len(idx) : (j + 1) * len(idx)]
        c = [colours[int(lbl)] for lbl in labels[idx]]
        ax.scatter(
            pts[:, 0],
            pts[:, 1],
            c=c,
            marker=MARKERS[j % len(MARKERS)],
            s=18,
            alpha=0.75,
            linewidths=0.3,
            edgecolors="k",
        )
    name = "PCA" if method == "pca" or len(x) < UMAP_MIN_POINTS else "UMAP"
    ax.set_title(f"Joint {name} of {', '.join(mods)} embeddings ({len(idx)} samples each)")
    ax.set_xticks([])
    ax.set_yticks([])
    shown = min(n_cls, 20)
    cls_h = [
        Line2D([], [], ls="", marker="o", color=colours[i], label=_cls(class_names, i)) for i in range(shown)
    ]
    mod_h = [
        Line2D([], [], ls="", marker=MARKERS[j % len(MARKERS)], color="0.3", label=m)
        for j, m in enumerate(mods)
    ]
    leg = ax.legend(handles=cls_h, title="class", loc="upper left", bbox_to_anchor=(1.01, 1.0), fontsize=8)
    ax.add_artist(leg)
    leg2 = ax.legend(
        handles=mod_h, title="modality", loc="lower left", bbox_to_anchor=(1.01, 0.0), fontsize=8
    )
    return _save(fig, out, extra=[leg, leg2])


def _tab_order(i: int, n_cls: int) -> int:
    """Index into tab10/tab20 so that the first ten of up to 20 classes get the strong tab20 colours."""
    return i if n_cls <= 10 else (2 * i) % 20 + (2 * i) // 20


def _cls(class_names: Sequence[str], i: int) -> str:
    """Class name for index i, or the index itself when unnamed."""
    return str(class_names[i]) if 0 <= i < len(class_names) else str(i)


def _unit(x: np.ndarray) -> np.ndarray:
    """L2-normalise rows."""
    x = np.asarray(x, dtype=np.float64)
    return x / np.maximum(np.linalg.norm(x, axis=-1, keepdims=True), 1e-12)


def top_k_indices(
    query: np.ndarray, gallery: np.ndarray, k: int, exclude: np.ndarray | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Return (indices [Q, k], cosine similarities [Q, k]) of the k most similar gallery rows per query.

    ``exclude`` optionally gives, per query, one gallery index to skip (e.g. itself in same-modality search).
    """
    sims = _unit(np.atleast_2d(query)) @ _unit(gallery).T
    if exclude is not None:
        sims[np.arange(len(sims)), np.asarray(exclude)] = -np.inf
    k = min(k, sims.shape[1] - (exclude is not None))
    order = np.argsort(-sims, axis=1, kind="stable")[:, :k]
    return order, np.take_along_axis(sims, order, axis=1)


def query_indices(n: int, n_queries: int, labels: np.ndarray | None = None) -> np.ndarray:
    """Deterministic query indices into [0, n): evenly spaced, or with `labels` one query from each of up
    to `n_queries` classes (classes evenly spread over the sorted class ids, each its middle sample),
    topped up with evenly spaced others when there are fewer classes than queries."""
    spaced = np.unique(np.linspace(0, n - 1, num=min(n, n_queries)).round().astype(int))
    if labels is None:
        return spaced
    labels = np.asarray(labels)
    classes = np.unique(labels)
    pick = classes[np.unique(np.linspace(0, len(classes) - 1, num=min(len(classes), n_queries)).round().astype(int))]
    chosen = [int(np.flatnonzero(labels == c)[len(np.flatnonzero(labels == c)) // 2]) for c in pick]
    for i in [*spaced.tolist(), *range(n)]:  # evenly spaced first, then any
        if len(chosen) >= min(n, n_queries):
            break
        if i not in chosen:
            chosen.append(i)
    return np.array(chosen, dtype=int)


def npz_kinds(data: dict) -> dict[str, str]:
    """{modality: kind} recorded in an embeddings file ({} for files written before kinds were recorded)."""
    return json.loads(str(data["kinds"])) if "kinds" in data else {}


def draw_item(ax: plt.Axes, data: dict, mod: str, i: int) -> None:
    """Render sample i of modality mod into ax, as its kind draws it (captions for text kinds)."""
    kinds = npz_kinds(data)
    kind = get_kind(kinds[mod]) if mod in kinds else None
    prev = data.get("captions") if kind is not None and kind.captions else data.get(f"preview_{mod}")
    if prev is None:
        keys = data.get("keys")
        ax.set_facecolor("#f7f7f7")  # nothing stored to draw: say what it is
        ax.text(0.5, 0.5, f"{mod} #{i}" + (f"\n{keys[i]}" if keys is not None else ""), ha="center", va="center",
                fontsize=7, transform=ax.transAxes)
    elif kind is not None:
        kind.draw(ax, prev[i])
    else:  # an older file: draw the stored array as a picture
        p = np.asarray(prev[i])
        ax.imshow(p if p.ndim == 3 and p.shape[-1] in (3, 4) else p.reshape(p.shape[0], -1), aspect="auto")
    ax.set_xticks([])
    ax.set_yticks([])


def _frame(ax: plt.Axes, colour: str, width: float = 3.0) -> None:
    """Draw a coloured border around an axis."""
    for s in ax.spines.values():
        s.set_visible(True)
        s.set_edgecolor(colour)
        s.set_linewidth(width)


def plot_retrieval_grid(
    npz_data: dict, query_mod: str, gallery_mod: str, out: Path, n_queries: int = 6, k: int = 5
) -> Path:
    """Plot queries (rows) with their top-k gallery items by cosine similarity; green = same class."""
    q_emb, g_emb = npz_data[f"emb_{query_mod}"], npz_data[f"emb_{gallery_mod}"]
    labels = np.asarray(npz_data["labels"])
    names = [str(c) for c in npz_data.get("class_names", [])]
    qi = query_indices(len(q_emb), n_queries, labels)
    same = query_mod == gallery_mod
    nn, sims = top_k_indices(q_emb[qi], g_emb, k, exclude=qi if same else None)
    k = nn.shape[1]
    fig, axes = plt.subplots(len(qi), k + 1, figsize=(1.9 * (k + 1), 2.05 * len(qi)), squeeze=False)
    for r, q in enumerate(qi):
        ax = axes[r, 0]
        draw_item(ax, npz_data, query_mod, int(q))
        ax.set_title(f"query: {_cls(names, int(labels[q]))}", fontsize=8, fontweight="bold")
        _frame(ax, "#333333")
        for c in range(k):
            g, ax = int(nn[r, c]), axes[r, c + 1]
            draw_item(ax, npz_data, gallery_mod, g)
            col = GOOD if labels[g] == labels[q] else BAD
            ax.set_title(f"{_cls(names, int(labels[g]))}  {sims[r, c]:.2f}", fontsize=8, color=col)
            _frame(ax, col)
    fig.suptitle(f"{query_mod} \u2192 {gallery_mod}: top-{k} by cosine similarity", fontsize=11)
    fig.tight_layout()
    return _save(fig, out)


def plot_confusion(
    cm: np.ndarray, class_names: Sequence[str], out: Path, title: str = "Confusion matrix"
) -> Path:
    """Plot a confusion matrix (rows = true, cols = predicted), coloured by row-normalised rate."""
    cm = np.asarray(cm, dtype=np.float64)
    n = cm.shape[0]
    rate = cm / np.maximum(cm.sum(axis=1, keepdims=True), 1e-12)
    size = min(12.0, 2.5 + 0.45 * n)
    fig, ax = plt.subplots(figsize=(size + 1.2, size))
    im = ax.imshow(rate, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04, label="row-normalised rate")
    ticks = [_cls(class_names, i) for i in range(n)]
    fs = 8 if n <= 20 else 6
    ax.set_xticks(
        range(n), ticks, rotation=45 if n > 3 else 0, ha="right" if n > 3 else "center", fontsize=fs
    )
    ax.set_yticks(range(n), ticks, fontsize=fs)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title(title)
    if n <= 30:
        integral = np.allclose(cm, np.round(cm))
        for i in range(n):
            for j in range(n):
                txt = f"{round(cm[i, j])}" if integral else f"{cm[i, j]:.2f}"
                ax.text(
                    j,
                    i,
                    txt,
                    ha="center",
                    va="center",
                    fontsize=fs,
                    color="white" if rate[i, j] > 0.5 else "black",
                )
    fig.tight_layout()
    return _save(fig, out)
