"""Images: PNG/JPEG/WebP files in shards, uint8 [H, W] or [H, W, 3] values, [N, C, size, size] in [-1, 1]."""

from __future__ import annotations

import io
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, UnidentifiedImageError

from jointspace.errors import UsageError
from jointspace.kinds.base import BadCell, Kind, Prep, QueryError, Size, resolve_path

IMAGE_EXTS = (".png", ".jpg", ".jpeg", ".webp", ".bmp")  # stored as is; other PIL formats are re-encoded
MAX_IMAGE_PIXELS = 4096 * 4096
TORCHVISION_MIN_PIXELS = 96 * 96  # smaller pictures decode faster in PIL alone (bench: 48 px 0.12 vs 0.16 ms)
IMAGE_SIZE = Size("image_size", 32, doc="images are resized to image_size x image_size")


def _uint8(t: torch.Tensor) -> torch.Tensor:
    return t.round().clamp(0, 255).to(torch.uint8)


def image_to_tensor(arrays: list[np.ndarray], size: int, channels: int | None = None) -> torch.Tensor:
    """Images [H, W] or [H, W, C] (0-255) -> uint8 [N, C, size, size], resized bilinearly and rounded:
    they stay uint8 (4x smaller than float) until `ImageKind.on_device` maps them to [-1, 1] where they
    are used. Grey images are expanded to the most channels in the batch, or to `channels` when that is
    more; with `channels` 1, colour images become their channel mean."""
    out = []
    for arr in arrays:
        arr = np.asarray(arr)
        if arr.dtype != np.uint8 or not arr.flags.writeable:  # a writable copy (PIL's arrays are read-only)
            arr = np.array(arr if arr.dtype == np.uint8 else np.clip(np.rint(arr), 0, 255), dtype=np.uint8)
        t = torch.from_numpy(arr)  # no copy: stacking below copies once
        t = t.unsqueeze(0) if t.ndim == 2 else t.permute(2, 0, 1)
        if t.shape[-2:] != (size, size):
            t = _uint8(F.interpolate(t[None].float(), size=(size, size), mode="bilinear", align_corners=False)[0])
        out.append(t)
    width = max(channels or 1, *(t.shape[0] for t in out))
    x = torch.stack([t.expand(width, -1, -1) if t.shape[0] == 1 else t for t in out])
    if channels is not None and x.shape[1] > channels:
        x = _uint8(x.float().mean(1, keepdim=True)).expand(-1, channels, -1, -1)
    return x


def decode_torchvision(data: torch.Tensor) -> torch.Tensor:
    """torchvision.io's decoder, channels as stored, imported on first use: importing torchvision costs a
    process about 1.5 s (its models import torch._dynamo), most of a small run's start."""
    from torchvision.io import ImageReadMode
    from torchvision.io import decode_image as decode

    return decode(data, ImageReadMode.UNCHANGED)


def decode_image(data: bytes) -> np.ndarray:
    """A stored picture as uint8 [H, W] (grey) or [H, W, 3]. PIL reads the header (size limit, format,
    mode); grey and RGB PNG/JPEG of at least 96x96 are then decoded by torchvision.io (libpng, libjpeg-turbo:
    the same pixels as PIL, tested; ~10-40 % faster at 224 px, slower below ~64 px where its per-call cost
    dominates); the rest by PIL."""
    with Image.open(io.BytesIO(data)) as img:  # PIL refuses bombs over 2 x its own limit; this, over ours
        if img.width * img.height > MAX_IMAGE_PIXELS:
            raise UsageError(f"{img.width}x{img.height} image is larger than {MAX_IMAGE_PIXELS} pixels")
        if img.format in ("PNG", "JPEG") and img.mode in ("L", "RGB") and img.width * img.height >= TORCHVISION_MIN_PIXELS:
            chw = decode_torchvision(torch.frombuffer(bytearray(data), dtype=torch.uint8))
            return chw[0].numpy() if chw.shape[0] == 1 else chw.permute(1, 2, 0).numpy()
        img.load()
        return np.asarray(img.convert("RGB") if img.mode not in ("L", "RGB") else img)


def read_image(source: bytes | str | Path, channels: int, name: str = "image") -> np.ndarray:
    """Decode an image file (path or bytes) to uint8 [H, W] (1 channel) or [H, W, 3]."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    try:
        with Image.open(io.BytesIO(data)) as img:
            if img.width * img.height > MAX_IMAGE_PIXELS:
                raise QueryError(f"{name}: {img.width}x{img.height} is larger than {MAX_IMAGE_PIXELS} pixels")
            img.load()
            arr = np.asarray(img.convert("L" if channels == 1 else "RGB"))
    except QueryError:
        raise
    except UnidentifiedImageError:
        raise QueryError(f"{name}: not an image (no known image format)") from None
    except (OSError, ValueError, Image.DecompressionBombError, SyntaxError) as err:
        raise QueryError(f"{name}: not a readable image ({type(err).__name__}: {err})") from None
    return arr


class ImageKind(Kind):
    name = "image"
    extensions = ("png", "jpg", "jpeg", "webp", "bmp")
    signatures = (b"\x89PNG\r\n\x1a\n", b"\xff\xd8\xff", b"RIFF", b"BM")
    aliases = ("image", "img", "picture", "photo")
    folder_words = ("rgb", "image", "img", "camera", "cam", "photo", "picture")
    default_tower = "cnn"
    content_cells = 48
    spatial = True
    picture = True
    preview_rank = 0
    sizes = (IMAGE_SIZE,)

    def encode(self, value: Any) -> tuple[str, bytes]:
        if isinstance(value, (str, Path)):
            path = Path(value)
            return path.suffix.lstrip(".").lower().replace("jpeg", "jpg"), path.read_bytes()
        buf = io.BytesIO()
        Image.fromarray(np.asarray(value, dtype=np.uint8)).save(buf, format="PNG")
        return "png", buf.getvalue()

    def decode(self, ext: str, data: bytes) -> np.ndarray:
        return decode_image(data)

    def recognise(self, column: str, values: list[str]) -> bool:
        share = sum(v.endswith(IMAGE_EXTS) and "://" not in v for v in values) / max(len(values), 1)
        return column.lower() == "image" or share > 0.5

    def check_cell(self, value: Any, base: Path, column: str) -> tuple[Any, Any]:
        path = resolve_path(value, base)
        if not path.is_file():
            raise BadCell(f"{column}: missing file {path}")
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", Image.DecompressionBombWarning)  # ours is the lower limit
                img = Image.open(path)
            with img:
                if img.width * img.height > MAX_IMAGE_PIXELS:
                    raise BadCell(f"{column}: {path} is {img.width}x{img.height}, larger than the "
                                  f"{MAX_IMAGE_PIXELS} pixels (4096x4096) every reader accepts")
                img.load()
                if path.suffix.lower() in IMAGE_EXTS:
                    return path, None
                return np.asarray(img if img.mode in ("L", "RGB") else img.convert("RGB")), None
        except BadCell:
            raise
        except Exception as err:  # noqa: BLE001 - any unreadable file makes the row bad
            raise BadCell(f"{column}: unreadable image file {path} ({type(err).__name__}: {err})") from None

    def to_tensors(self, name: str, values: list, prep: Prep) -> dict[str, torch.Tensor]:
        arrays = [np.asarray(v)[..., :3] if np.ndim(v) == 3 else v for v in values]  # drop alpha
        return {name: image_to_tensor(arrays, prep.image_size, prep.channels.get(name))}

    def channels_of(self, tensor: torch.Tensor) -> int | None:
        return int(tensor.shape[1])

    def on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """uint8 [N, C, H, W] -> float32 in [-1, 1] (as it was before: value / 127.5 - 1)."""
        return tensor.float().div_(127.5).sub_(1.0) if tensor.dtype == torch.uint8 else tensor

    def tower_defaults(self, name: str, prep: Prep) -> dict[str, Any]:
        out: dict[str, Any] = {"img_size": prep.image_size}
        if name in prep.channels:
            out["in_chans"] = prep.channels[name]
        return out

    def read_query(self, source: bytes | str | Path, prep: Prep, name: str, label: str) -> np.ndarray:
        return read_image(source, int(prep.channels.get(name) or 3), label)

    def check_query(self, name: str, value: Any, tower) -> None:
        arr = np.asarray(value)
        if arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1 or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4)):
            raise QueryError(f"{name}: expected an image [H, W] or [H, W, 1|3|4], got shape {arr.shape}")

    def preview(self, value: Any) -> np.ndarray:
        return np.asarray(value).astype(np.uint8)

    def draw(self, ax, value: np.ndarray) -> None:
        p = np.asarray(value)
        if p.ndim == 3 and p.shape[-1] in (3, 4):
            ax.imshow(p)
        else:
            ax.imshow(p.reshape(p.shape[0], -1), cmap="gray" if p.dtype == np.uint8 else "viridis", aspect="auto")
