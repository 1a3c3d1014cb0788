"""Feature sequences (MFCC / log-mel frames): .npy [T, F] in shards, padded [N, max_frames, F] + lengths."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointspace.kinds.base import (
    NpyKind,
    Prep,
    QueryError,
    Size,
    check_array_cell,
    first_conv_channels,
    scaled_grey,
)


def sequence_to_tensor(arrays: list[np.ndarray], max_frames: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Feature sequences [T, F] -> (padded [N, max_frames, F], lengths [N]); per-utterance CMVN."""
    n_feat = arrays[0].shape[-1]
    out = torch.zeros(len(arrays), max_frames, n_feat)
    lengths = torch.zeros(len(arrays), dtype=torch.long)
    for i, arr in enumerate(arrays):
        x = torch.from_numpy(np.asarray(arr, dtype=np.float32)[:max_frames])
        x = (x - x.mean(0)) / (x.std(0, unbiased=False) + 1e-5) if len(x) > 1 else x * 0
        out[i, : len(x)] = x
        lengths[i] = len(x)
    return out, lengths


def trim_padding(a: np.ndarray) -> np.ndarray:
    """Drop trailing all-zero (padding) frames of a [T, F] array."""
    nz = np.flatnonzero(np.abs(a).sum(axis=1) > 0)
    return a[: nz[-1] + 1] if len(nz) else a


class SequenceKind(NpyKind):
    name = "sequence"
    aliases = ("sequence", "audio", "speech", "frames", "mfcc")
    folder_words = ("audio", "speech", "sound", "voice", "mfcc", "sequence", "feature")
    default_tower = "frames_cnn"
    content_cells = 48
    preview_rank = 3
    fallback = True  # a .npy column that no other kind claims by its name
    sizes = (Size("max_frames", 96, doc="feature sequences: longer ones are cut, shorter ones padded"),)

    def check_cell(self, value: Any, base: Path, column: str) -> tuple[Any, Any]:
        out, arr = check_array_cell(value, base, column, self.name)
        return out, arr.shape[1]

    def to_tensors(self, name: str, values: list, prep: Prep) -> dict[str, torch.Tensor]:
        x, lengths = sequence_to_tensor(values, prep.max_frames)
        return {name: x, f"{name}_len": lengths}

    def check_query(self, name: str, value: Any, tower) -> None:
        arr, n_feat = np.asarray(value), first_conv_channels(tower)
        if arr.ndim != 2 or arr.shape[0] < 1 or (n_feat is not None and arr.shape[1] != n_feat):
            raise QueryError(f"{name}: expected feature frames [T, {n_feat or 'F'}] (e.g. MFCCs), "
                             f"got shape {arr.shape}")

    def preview(self, value: Any) -> np.ndarray:
        return scaled_grey(np.asarray(value).T)  # time runs left to right

    def stack_previews(self, values: list) -> np.ndarray:
        frames = max(len(v) for v in values)
        out = np.zeros((len(values), frames, np.shape(values[0])[-1]), dtype=np.float32)
        for i, v in enumerate(values):
            out[i, : len(v)] = v
        return out

    def draw(self, ax, value: np.ndarray) -> None:
        p = np.asarray(value)
        ax.imshow(trim_padding(p.reshape(p.shape[0], -1)).T, aspect="auto", origin="lower", cmap="magma")
