"""`jointspace augment explore`: one seed, a grid of guidance x steps x scheduler, each cell scored by a
trained joint space (does a generated image retrieve its class's caption among the classes' captions,
image->text R@1; its mean cosine to the class's text centroid) and by wall time: a table (JSON,
Markdown), an image grid and one HTML page."""

from __future__ import annotations

import base64
import html
import io
import itertools
import json
import time
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from jointspace.augment.sample import class_ids
from jointspace.errors import UsageError
from jointspace.evaluate.embed import class_prompts, embed_class_prompts
from jointspace.index.query import Encoder
from jointspace.kinds import with_role


def class_centroids(enc: Encoder, names: list[str]) -> np.ndarray:
    """The normalised mean embedding of each class's caption prompts (as zero-shot evaluation ensembles
    them): [C, D]."""
    text = with_role(enc.kinds, "captions")
    if text is None:
        raise UsageError("the joint space has no caption modality to score generated images against")
    return embed_class_prompts(enc.model, text, class_prompts({"class_names": names}), enc.prep.context_length,
                               enc.device, enc.prep.tokenizers.get(text)).numpy()


def fit_channels(images: np.ndarray, channels: int) -> list[np.ndarray]:
    """Generated uint8 images in the joint space's channel count (grey <-> RGB)."""
    if channels == 1 and images.ndim == 4:
        images = images.mean(-1).round().astype(np.uint8)
    elif channels == 3 and images.ndim == 3:
        images = np.repeat(images[..., None], 3, axis=-1)
    return list(images)


def score_cell(enc: Encoder, cents: np.ndarray, names: list[str], images: dict[str, np.ndarray]) -> dict:
    """image->text R@1 against the class centroids and the mean cosine to the own class's centroid."""
    picture = with_role(enc.kinds, "picture")
    channels = int(enc.prep.channels.get(picture, 3))
    hits, cosines = [], []
    for name, arr in images.items():
        if name not in names:
            continue
        sims = enc.encode(picture, fit_channels(arr, channels), check=False) @ cents.T
        target = names.index(name)
        hits += (sims.argmax(1) == target).tolist()
        cosines += sims[:, target].tolist()
    return {"R@1": float(np.mean(hits)) if hits else float("nan"),
            "cosine": float(np.mean(cosines)) if cosines else float("nan"), "scored": len(hits)}


def explore(sampler, joint_run: str | Path, out: str | Path, classes: Sequence[str] | None, guidances: Sequence[float],
            steps: Sequence[int], schedulers: Sequence[str], seed: int = 0, n: int = 4) -> list[dict]:
    """Sample every (scheduler, guidance, steps) cell at one seed, score it, write explore.{json,md,png,html}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    enc = Encoder.from_run(joint_run)
    names = list(enc.info.class_names or [])
    cents = class_centroids(enc, names)
    ids = class_ids(sampler, classes)
    rows, panels = [], []
    for sched, g, s in itertools.product(schedulers, guidances, steps):
        t0 = time.perf_counter()
        images = {sampler.class_names[c]: sampler.sample_class(c, n, g, s, sched, seed) for c in ids}
        seconds = time.perf_counter() - t0
        rows.append({"scheduler": sched, "guidance": g, "steps": s, "seconds": round(seconds, 3),
                     **score_cell(enc, cents, names, images)})
        panels.append((f"{sched}, g {g:g}, {s} steps", np.concatenate([np.concatenate(list(a), 1) for a in images.values()], 0)))
    (out / "explore.json").write_text(json.dumps({"joint_run": str(joint_run), "seed": seed, "n_per_class": n,
                                                  "classes": [sampler.class_names[c] for c in ids], "cells": rows},
                                                 indent=2))
    md = _table(rows)
    (out / "explore.md").write_text(md + "\n")
    png = _grid(panels, out / "explore.png")
    (out / "explore.html").write_text(
        "<html><body style='font-family:sans-serif'><h1>Inference settings</h1>"
        f"<p>seed {seed}, {n} images per class; scored by the joint space {html.escape(str(joint_run))}</p>"
        f"<pre>{html.escape(md)}</pre><img src='data:image/png;base64,{base64.b64encode(png).decode()}'>"
        "</body></html>")
    return rows


def _table(rows: list[dict]) -> str:
    lines = ["| scheduler | guidance | steps | image->text R@1 | cosine to class text | seconds |",
             "|---|---:|---:|---:|---:|---:|"]
    lines += [f"| {r['scheduler']} | {r['guidance']:g} | {r['steps']} | {r['R@1']:.3f} | {r['cosine']:.3f} | "
              f"{r['seconds']:.2f} |" for r in rows]
    return "\n".join(lines)


def _grid(panels: list[tuple[str, np.ndarray]], path: Path) -> bytes:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    cols = min(4, len(panels))
    rows = (len(panels) + cols - 1) // cols
    fig, axes = plt.subplots(rows, cols, squeeze=False, figsize=(3.2 * cols, 3.0 * rows))
    for ax, (title, img) in itertools.zip_longest(axes.flat, panels, fillvalue=(None, None)):
        ax.axis("off")
        if img is not None:
            ax.imshow(img, cmap="gray" if img.ndim == 2 else None, vmin=0, vmax=255)
            ax.set_title(title, fontsize=8)
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100)
    plt.close(fig)
    path.write_bytes(buf.getvalue())
    return buf.getvalue()
