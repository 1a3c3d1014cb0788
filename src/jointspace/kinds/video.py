"""Video clips: uint8 frames [T, H, W, C] (C 1 or 3, any T), stored as .npz (one `frames` array). A batch
is uint8 [N, video_frames, C, image_size, image_size] (frames picked evenly over the clip, so a short clip
repeats frames and a long one skips some), mapped to [-1, 1] on the device like images."""

from __future__ import annotations

import io
import zipfile
from pathlib import Path
from typing import Any

import numpy as np
import torch

from jointspace.errors import UsageError
from jointspace.kinds.base import BadCell, Kind, Prep, QueryError, Size, first_conv_channels, resolve_path
from jointspace.kinds.image import IMAGE_SIZE, image_to_tensor

VIDEO_FRAMES = Size("video_frames", 8, doc="video clips are sampled evenly to this many frames")
MAX_VIDEO_VALUES = 64_000_000  # uint8 values of one clip (e.g. 300 frames of 256 x 256 x 3)
PREVIEW_FRAMES = 4  # frames side by side in a thumbnail


def save_clip(frames: np.ndarray) -> bytes:
    """uint8 frames -> .npz bytes holding `frames.npy`, byte-identical for identical frames (fixed date)."""
    buf, member = io.BytesIO(), io.BytesIO()
    np.save(member, np.ascontiguousarray(frames, dtype=np.uint8), allow_pickle=False)
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.writestr(zipfile.ZipInfo("frames.npy", date_time=(1980, 1, 1, 0, 0, 0)), member.getvalue(),
                    compress_type=zipfile.ZIP_DEFLATED)
    return buf.getvalue()


def load_clip(data: bytes, label: str = "video") -> np.ndarray:
    """.npz (its `frames` array, or its only one) or .npy bytes -> uint8 [T, H, W, C]; never unpickles;
    raises ValueError naming `label` when it is not a clip."""
    try:
        arrays = np.load(io.BytesIO(data), allow_pickle=False)
        if isinstance(arrays, np.lib.npyio.NpzFile):
            with arrays:
                names = arrays.files
                if "frames" not in names and len(names) != 1:
                    raise UsageError(f"an .npz with arrays {names} and none named 'frames'")
                arrays = arrays["frames" if "frames" in names else names[0]]
    except (ValueError, OSError, EOFError, zipfile.BadZipFile) as err:
        raise UsageError(f"{label}: not a video clip (.npz or .npy of frames: {err})") from None
    return as_clip(arrays, label)


def as_clip(arr: Any, label: str) -> np.ndarray:
    """Frames [T, H, W] or [T, H, W, 1|3] (values 0-255) -> uint8 [T, H, W, C]; ValueError naming `label`."""
    arr = np.asarray(arr)
    if arr.ndim == 3:
        arr = arr[..., None]
    if arr.ndim != 4 or arr.shape[-1] not in (1, 3) or min(arr.shape[:3]) < 1 or arr.dtype.kind not in "biuf":
        raise UsageError(f"{label}: expected uint8 frames [T, H, W, 1|3], got {arr.dtype} of shape {arr.shape}")
    if arr.size > MAX_VIDEO_VALUES:
        raise UsageError(f"{label}: {arr.size} values is more than {MAX_VIDEO_VALUES}")
    return arr if arr.dtype == np.uint8 else np.clip(np.rint(np.nan_to_num(arr)), 0, 255).astype(np.uint8)


def video_to_tensor(clips: list[np.ndarray], n_frames: int, size: int, channels: int | None) -> torch.Tensor:
    """Clips [T_i, H, W, C] -> uint8 [N, n_frames, C, size, size]: frames picked evenly over each clip."""
    frames = [clip[i] for clip in clips for i in np.linspace(0, len(clip) - 1, n_frames).round().astype(int)]
    x = image_to_tensor([f[..., 0] if f.shape[-1] == 1 else f for f in frames], size, channels)
    return x.view(len(clips), n_frames, *x.shape[1:])


class VideoKind(Kind):
    name = "video"
    extensions = ("npz",)
    signatures = (b"PK\x03\x04",)
    aliases = ("video", "clip", "movie")
    folder_words = ("video", "clip", "movie")
    default_tower = "video_cnn"
    preview_rank = 1
    sizes = (IMAGE_SIZE, VIDEO_FRAMES)

    def encode(self, value: Any) -> tuple[str, bytes]:
        if isinstance(value, (str, Path)):
            value = load_clip(Path(value).read_bytes(), str(value))
        return "npz", save_clip(as_clip(value, "video"))

    def decode(self, ext: str, data: bytes) -> np.ndarray:
        return load_clip(data)

    def recognise(self, column: str, values: list[str]) -> bool:
        share = sum(v.endswith(".npz") and "://" not in v for v in values) / max(len(values), 1)
        return column.lower() in self.aliases or share > 0.5

    def check_cell(self, value: Any, base: Path, column: str) -> tuple[Any, Any]:
        path = resolve_path(value, base)
        if not path.is_file():
            raise BadCell(f"{column}: missing file {path}")
        try:
            load_clip(path.read_bytes(), str(path))
        except (ValueError, OSError) as err:
            raise BadCell(f"{column}: {err}") from None
        return path, None

    def to_tensors(self, name: str, values: list, prep: Prep) -> dict[str, torch.Tensor]:
        clips = [as_clip(v, name) for v in values]
        return {name: video_to_tensor(clips, prep.video_frames, prep.image_size, prep.channels.get(name))}

    def channels_of(self, tensor: torch.Tensor) -> int | None:
        return int(tensor.shape[2])

    def on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """uint8 [N, T, C, H, W] -> float32 in [-1, 1], as images."""
        return tensor.float().div_(127.5).sub_(1.0) if tensor.dtype == torch.uint8 else tensor

    def tower_defaults(self, name: str, prep: Prep) -> dict[str, Any]:
        return {"in_chans": prep.channels[name]} if name in prep.channels else {}

    def read_query(self, source: bytes | str | Path, prep: Prep, name: str, label: str) -> np.ndarray:
        data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
        try:
            return load_clip(data, label)
        except ValueError as err:
            raise QueryError(str(err)) from None

    def check_query(self, name: str, value: Any, tower) -> None:
        try:
            clip = as_clip(value, name)
        except ValueError as err:
            raise QueryError(str(err)) from None
        chans = first_conv_channels(tower)
        if chans is not None and clip.shape[-1] not in (1, chans):
            raise QueryError(f"{name}: frames have {clip.shape[-1]} channels, the tower takes {chans}")

    def preview(self, value: Any) -> np.ndarray:
        """Up to PREVIEW_FRAMES frames, evenly over the clip, side by side, as [H, W, 3]."""
        clip = as_clip(value, "video")
        picks = np.unique(np.linspace(0, len(clip) - 1, PREVIEW_FRAMES).round().astype(int))
        return np.concatenate(list(np.broadcast_to(clip[picks], (*clip[picks].shape[:3], 3))), axis=1)

    def stack_previews(self, values: list) -> np.ndarray:
        strips = [self.preview(v) for v in values]
        out = np.zeros((len(strips), *np.max([s.shape for s in strips], axis=0)), dtype=np.uint8)
        for i, s in enumerate(strips):
            out[i, : s.shape[0], : s.shape[1]] = s
        return out

    def draw(self, ax, value: np.ndarray) -> None:
        ax.imshow(np.asarray(value))
