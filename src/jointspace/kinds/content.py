"""A value's content as a short vector, for finding near copies (the audit): an array averaged over a
fixed grid of blocks, centred and L2-normalised, so that a copy with a little noise has a cosine near 1
to its original whatever the run's embedding does with it."""

from __future__ import annotations

import numpy as np


def block_means(value, cells: int) -> np.ndarray:
    """A numeric array [H, W, ...] (further axes averaged; a 1-D one is a column) as the means of a
    cells x cells grid of blocks of its first two axes (always cells x cells values: along an axis shorter
    than `cells`, each row or column has a cell of its own and the cells between stay 0), the filled ones
    minus their mean, scaled to unit length (all zeros when flat)."""
    a = np.nan_to_num(np.asarray(value, dtype=np.float64), posinf=0.0, neginf=0.0)
    a = a.reshape(a.shape[0], -1) if a.ndim == 1 else a
    while a.ndim > 2:
        a = a.mean(axis=-1)
    rows = np.arange(a.shape[0]) * cells // max(a.shape[0], 1)
    cols = np.arange(a.shape[1]) * cells // max(a.shape[1], 1)
    cell = (rows[:, None] * cells + cols[None, :]).ravel()
    sums = np.bincount(cell, weights=a.ravel(), minlength=cells * cells)
    counts = np.bincount(cell, minlength=cells * cells)
    filled = counts > 0
    v = np.divide(sums, counts, out=np.zeros(cells * cells), where=filled)
    v[filled] -= v[filled].mean() if filled.any() else 0.0
    norm = np.linalg.norm(v)
    return (v / norm if norm > 0 else v).astype(np.float32)
