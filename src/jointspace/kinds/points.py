"""LiDAR point clouds: .npy [N, 3] (x, y, z in metres) or [N, 4] (+ intensity) of any N. Batched as
[B, max_points, D] with lengths; xyz divided by a fixed per-run `max_range`, clouds longer than
`max_points` thinned by an even stride (deterministic, so a scan gets the same input everywhere)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointspace.errors import UsageError
from jointspace.kinds.base import (
    BadCell,
    NpyKind,
    Prep,
    QueryError,
    Size,
    check_array_cell,
    first_conv_channels,
)

POINT_WORDS = ("points", "point_cloud", "pointcloud", "cloud", "pcd")
PREVIEW_SIDE = 64
PREVIEW_POINTS = 1024  # points of a cloud kept for plots


def thin(cloud: np.ndarray, max_points: int) -> np.ndarray:
    """At most `max_points` rows, evenly strided over the cloud."""
    if len(cloud) <= max_points:
        return cloud
    return cloud[np.linspace(0, len(cloud) - 1, max_points).round().astype(int)]


def points_to_tensor(clouds: list[np.ndarray], max_points: int, max_range: float) -> tuple[torch.Tensor, torch.Tensor]:
    """Clouds [N_i, D] -> (zero-padded [B, max_points, D] with xyz / max_range, lengths [B])."""
    dims = int(np.shape(clouds[0])[1])
    out = torch.zeros(len(clouds), max_points, dims)
    lengths = torch.zeros(len(clouds), dtype=torch.long)
    for i, cloud in enumerate(clouds):
        x = torch.from_numpy(np.asarray(thin(np.asarray(cloud, dtype=np.float32), max_points)))
        x = torch.cat([x[:, :3] / max_range, x[:, 3:]], dim=1)
        out[i, : len(x)] = x
        lengths[i] = len(x)
    return out, lengths


class PointsKind(NpyKind):
    name = "points"
    column_words = POINT_WORDS
    aliases = ("points", "pointcloud", "point_cloud", "cloud")
    folder_words = ("point", "pointcloud", "cloud", "pcd", "xyz")
    word_needed = True
    default_tower = "pointnet"
    ranged = True
    preview_rank = 2
    sizes = (Size("max_points", 1024, doc="point clouds: longer clouds are thinned by an even stride"),)

    def check_cell(self, value: Any, base: Path, column: str) -> tuple[Any, Any]:
        out, arr = check_array_cell(value, base, column, self.name)
        if arr.shape[1] not in (3, 4) or len(arr) < 1:
            raise BadCell(f"{column}: expected a point cloud [N, 3] or [N, 4], got shape {arr.shape}")
        return out, arr.shape[1]

    def fit(self, name: str, values: list, prep: Prep) -> Prep:
        if name in prep.max_range or not values:
            return prep
        far = max(1.0, *(float(np.linalg.norm(np.asarray(v)[:, :3], axis=1).max()) for v in values if len(v)))
        return prep.updated(max_range={name: far})

    def to_tensors(self, name: str, values: list, prep: Prep) -> dict[str, torch.Tensor]:
        if name not in prep.max_range:
            raise UsageError(f"{name}: no max_range fixed for this point-cloud modality")
        x, lengths = points_to_tensor(values, prep.max_points, prep.max_range[name])
        return {name: x, f"{name}_len": lengths}

    def channels_of(self, tensor: torch.Tensor) -> int | None:
        return int(tensor.shape[-1])

    def tower_defaults(self, name: str, prep: Prep) -> dict[str, Any]:
        return {"in_features": prep.channels[name]} if name in prep.channels else {}

    def check_query(self, name: str, value: Any, tower) -> None:
        arr, dims = np.asarray(value), first_conv_channels(tower)
        if arr.ndim != 2 or len(arr) < 1 or arr.shape[1] not in (3, 4) or (dims is not None and arr.shape[1] != dims):
            raise QueryError(f"{name}: expected a point cloud [N, {dims or '3|4'}], got shape {arr.shape}")

    def preview(self, value: Any) -> np.ndarray:
        """Bird's-eye view: points counted on a grid over x (right) and z (forward)."""
        p = np.asarray(value, dtype=np.float32)
        p = p[np.isfinite(p).all(axis=1)]
        img = np.zeros((PREVIEW_SIDE, PREVIEW_SIDE), dtype=np.float32)
        if len(p):
            span = max(float(np.abs(p[:, [0, 2]]).max()), 1e-6)
            col = ((p[:, 0] / span + 1) / 2 * (PREVIEW_SIDE - 1)).round().astype(int)
            row = ((1 - p[:, 2] / span) / 2 * (PREVIEW_SIDE - 1)).round().astype(int)
            np.add.at(img, (row, col), 1.0)
        return (np.sqrt(img / max(img.max(), 1.0)) * 255).astype(np.uint8)

    def stack_previews(self, values: list) -> np.ndarray:
        kept = [thin(np.asarray(v, dtype=np.float32), PREVIEW_POINTS) for v in values]
        out = np.full((len(kept), max(len(k) for k in kept), np.shape(kept[0])[1]), np.nan, dtype=np.float32)
        for i, k in enumerate(kept):
            out[i, : len(k)] = k
        return out

    def draw(self, ax, value: np.ndarray) -> None:
        p = np.asarray(value)
        p = p[np.isfinite(p).all(axis=1)]
        ax.scatter(p[:, 0], p[:, 2], c=p[:, 1], s=1, cmap="viridis")
        ax.set_aspect("equal", adjustable="datalim")
