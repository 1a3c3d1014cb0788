"""LiDAR / depth range images: .npy [H, W] in metres, [N, 1, H, W] scaled by log1p against a fixed
per-run `max_range` (recorded with the data, set in the config, or the train split's largest range)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointspace.errors import UsageError
from jointspace.kinds.base import (
    NpyKind,
    Prep,
    QueryError,
    check_array_cell,
    scaled_grey,
)

RANGE_WORDS = ("lidar", "depth", "range")


def range_to_tensor(arrays: list[np.ndarray], max_range: float) -> torch.Tensor:
    """Range images [H, W] (metres) -> [N, 1, H, W]: log1p(clamp(r, 0, max_range)) / log1p(max_range),
    in [0, 1]. `max_range` is fixed per run, so a scan gets the same input in any batch."""
    x = torch.from_numpy(np.stack([np.asarray(a, dtype=np.float32) for a in arrays]))
    scale = max(float(max_range), 1.0)
    return (torch.log1p(x.clamp(min=0, max=scale)) / np.log1p(scale))[:, None]


def largest_range(values: list) -> float:
    """The largest finite value over arrays (at least 1 m; inf / NaN "no return" markers are ignored)."""
    finite = [np.asarray(v, dtype=np.float32) for v in values]
    finite = [a[np.isfinite(a)] for a in finite]
    return max(1.0, *(float(a.max()) for a in finite if a.size))


class RangeKind(NpyKind):
    name = "range"
    column_words = RANGE_WORDS
    aliases = ("range", "lidar", "depth")
    default_tower = "range_cnn"
    spatial = True
    ranged = True
    preview_rank = 1

    def check_cell(self, value: Any, base: Path, column: str) -> tuple[Any, Any]:
        out, arr = check_array_cell(value, base, column, self.name)
        return out, tuple(arr.shape)

    def fit(self, name: str, values: list, prep: Prep) -> Prep:
        if name in prep.max_range or not values:
            return prep
        return prep.updated(max_range={name: largest_range(values)})

    def to_tensors(self, name: str, values: list, prep: Prep) -> dict[str, torch.Tensor]:
        if name not in prep.max_range:
            raise UsageError(f"{name}: no max_range fixed for this range modality")
        return {name: range_to_tensor(values, prep.max_range[name])}

    def channels_of(self, tensor: torch.Tensor) -> int | None:
        return int(tensor.shape[1])

    def tower_defaults(self, name: str, prep: Prep) -> dict[str, Any]:
        return {"in_chans": prep.channels.get(name, 1)}

    def check_query(self, name: str, value: Any, tower) -> None:
        arr = np.asarray(value)
        if arr.ndim != 2 or min(arr.shape) < 8:
            raise QueryError(f"{name}: expected a range image [H, W] (H, W >= 8), got shape {arr.shape}")

    def preview(self, value: Any) -> np.ndarray:
        return scaled_grey(value)

    def draw(self, ax, value: np.ndarray) -> None:
        p = np.asarray(value)
        ax.imshow(p if p.ndim == 2 else p[..., 0], aspect="auto", cmap="turbo")
