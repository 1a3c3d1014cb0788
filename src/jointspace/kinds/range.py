"""LiDAR / depth range images: .npy [H, W] in metres, [N, 1, H, W] scaled by log1p against a fixed
per-run `max_range` (recorded with the data, set in the config, or the train split's largest range)."""

from __future__ import annotations

from collections.abc import Iterable
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
NO_RETURN_SHARE = 0.01  # the largest range is the "no return" marker when it fills this share of all cells


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


def angle_grid(arrays: dict[str, np.ndarray], shape: tuple[int, ...], where: str) -> dict[str, np.ndarray]:
    """azimuth [W] or [H, W] and zenith [H] or [H, W] for range images [H, W] -> both [H, W] in radians
    (arrays holding an angle beyond 2 pi are read as degrees)."""
    if len(shape) != 2:
        raise UsageError(f"{where}: range images of shape {shape} have no [H, W] grid")
    out = {}
    for name, axis in (("azimuth", 1), ("zenith", 0)):
        a = np.asarray(arrays[name], dtype=np.float64)
        if a.shape not in ((shape[axis],), shape) or not np.isfinite(a).all():
            raise UsageError(f"{where}: {name}.npy has shape {a.shape}; range images {shape} need "
                             f"[{shape[axis]}] or {list(shape)} finite angles")
        out[name] = np.broadcast_to(a[None, :] if axis else a[:, None], shape) if a.ndim == 1 else a
    return out


def no_return_value(values: Iterable[np.ndarray]) -> float | None:
    """The largest finite range when it fills NO_RETURN_SHARE of all cells (a sensor's "nothing hit"), else None."""
    top, at_top, cells = -np.inf, 0, 0
    for v in values:
        v = np.asarray(v, dtype=np.float32)
        finite = v[np.isfinite(v)]
        cells += v.size
        if finite.size and float(finite.max()) > top:
            top, at_top = float(finite.max()), 0
        at_top += int((finite == top).sum())
    return top if cells and at_top >= NO_RETURN_SHARE * cells else None


class RangeKind(NpyKind):
    name = "range"
    column_words = RANGE_WORDS
    aliases = ("range", "lidar", "depth")
    folder_words = (*RANGE_WORDS, "scan")
    word_needed = True  # a .npy folder is a range image by its name, as a manifest column
    grid_files = ("azimuth.npy", "zenith.npy")
    default_tower = "range_cnn"
    content_cells = 48
    spatial = True
    ranged = True
    preview_rank = 1

    def check_cell(self, value: Any, base: Path, column: str) -> tuple[Any, Any]:
        out, arr = check_array_cell(value, base, column, self.name)
        return out, tuple(arr.shape)

    def read_grid(self, arrays: dict[str, np.ndarray], values: Iterable[np.ndarray], where: str) -> dict:
        """azimuth.npy / zenith.npy (radians; degrees when beyond 2 pi) -> {azimuth, zenith: [H, W] lists,
        degrees, no_return}: `no_return` is the range that marks "nothing hit" (see no_return_value)."""
        values = iter(values)
        first = next(values, None)
        if first is None:
            raise UsageError(f"{where}: no readable range image to check azimuth.npy and zenith.npy against")
        grid = angle_grid(arrays, np.shape(first), where)
        degrees = max(float(np.abs(a).max()) for a in grid.values()) > 2 * np.pi + 1e-6
        grid = {k: np.radians(a) if degrees else a for k, a in grid.items()}
        return {**{k: a.round(9).tolist() for k, a in grid.items()}, "degrees": degrees,
                "no_return": no_return_value([first, *values])}

    def to_points(self, value: Any, grid: dict) -> np.ndarray:
        """The hits of a range image as points [N, 3] in the sensor frame, as the built-in shapes set has
        them: x right = r cos(zenith) sin(azimuth), y up = r sin(zenith), z forward = r cos(zenith)
        cos(azimuth) (zenith: elevation above the horizontal). Hits: finite, > 0 and below `no_return`."""
        r = np.asarray(value, dtype=np.float64)
        az, ze = np.asarray(grid["azimuth"]), np.asarray(grid["zenith"])
        if r.shape != az.shape:
            raise UsageError(f"range image of shape {r.shape} does not match its {list(az.shape)} angle grid")
        with np.errstate(invalid="ignore"):
            hit = np.isfinite(r) & (r > 0) & (r < (grid.get("no_return") or np.inf))
        xyz = np.stack([np.cos(ze) * np.sin(az), np.sin(ze), np.cos(ze) * np.cos(az)], axis=-1)
        return (r[hit][:, None] * xyz[hit]).astype(np.float32)

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
