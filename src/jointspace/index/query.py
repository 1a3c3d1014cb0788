"""Encode queries of any modality (text, image file, .npy frames or range image, raw vector) with a run."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import numpy as np
import torch
from PIL import Image, UnidentifiedImageError
from torch import nn

from jointspace.config import RunConfig
from jointspace.data import transforms as T
from jointspace.model import JointModel
from jointspace.runs import CONFIG, WEIGHTS, load_run, resolve_device

MAX_IMAGE_PIXELS = 4096 * 4096
MAX_ARRAY_VALUES = 4_000_000
MAX_TEXT_CHARS = 2000
# CLI flag / API field -> modality kind it names
FLAG_KINDS = {"text": "text", "image": "image", "audio": "sequence", "sequence": "sequence",
              "lidar": "range", "range": "range", "depth": "range"}


class QueryError(ValueError):
    """A query cannot be encoded; the message names the modality, file or field."""


def model_fingerprint(run_dir: str | Path) -> str:
    """sha256 over the run's model.safetensors bytes and its config.yaml."""
    run_dir = Path(run_dir)
    h = hashlib.sha256()
    for name in (WEIGHTS, CONFIG):
        path = run_dir / name
        if not path.exists():
            raise FileNotFoundError(f"{path}: missing; is {run_dir} a finished jointspace run?")
        h.update(name.encode() + b"\0")
        with path.open("rb") as f:
            for block in iter(lambda: f.read(1 << 20), b""):
                h.update(block)
    return h.hexdigest()


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


def read_npy(source: bytes | str | Path, name: str = "array") -> np.ndarray:
    """Load a NumPy .npy array (path or bytes) without unpickling; finite float32."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    if not data.startswith(b"\x93NUMPY"):
        raise QueryError(f"{name}: not a .npy array (no NumPy header; save it with numpy.save)")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError) as err:
        raise QueryError(f"{name}: not a .npy array ({type(err).__name__}: {err})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise QueryError(f"{name}: expected a numeric .npy array, got dtype {getattr(arr, 'dtype', type(arr))}")
    if arr.size > MAX_ARRAY_VALUES:
        raise QueryError(f"{name}: {arr.size} values is more than {MAX_ARRAY_VALUES}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise QueryError(f"{name}: contains NaN or infinite values")
    return arr


def parse_vector(values, dim: int, name: str = "vector") -> np.ndarray:
    """A raw query vector (list or array of `dim` floats) -> L2-normalised float32 [1, dim]."""
    try:
        vec = np.asarray(values, dtype=np.float32).reshape(-1)
    except (TypeError, ValueError) as err:
        raise QueryError(f"{name}: not a list of numbers ({err})") from None
    if vec.shape[0] != dim:
        raise QueryError(f"{name}: has {vec.shape[0]} values, the index has dimension {dim}")
    norm = float(np.linalg.norm(vec.astype(np.float64)))
    if not np.isfinite(vec).all() or norm == 0.0:
        raise QueryError(f"{name}: must be finite and non-zero")
    return (vec.astype(np.float64) / norm).astype(np.float32)[None]


def _first_in_channels(tower: nn.Module) -> int | None:
    """Input channels/features of a tower's first convolution, if it has one."""
    for module in tower.modules():
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return int(module.in_channels)
    return None


def _tokenizer_specs(cfg: RunConfig) -> dict[str, str]:
    """Text modality -> tokenizer spec of towers that bring their own tokenizer (as training used them)."""
    from jointspace.model import text_tokenizers

    return text_tokenizers(cfg.model)


class Encoder:
    """A trained run ready to embed raw values of any of its modalities into the joint space."""

    def __init__(self, cfg: RunConfig, model: JointModel, info: dict, run_dir: Path | None = None,
                 device: str = "cpu"):
        self.cfg, self.model, self.info = cfg, model.eval(), info
        self.run_dir = Path(run_dir).resolve() if run_dir else None
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.kinds: dict[str, str] = {m: info["kinds"][m] for m in model.modalities}
        self.image_channels = int(info.get("image_channels") or 3)
        self._tokenizers: dict[str, object] = {}
        self._fingerprint: str | None = None

    @classmethod
    def from_run(cls, run_dir: str | Path, device: str = "cpu") -> Encoder:
        """Load a finished run's config, weights and run info."""
        cfg, model, info = load_run(run_dir)
        return cls(cfg, model, info, Path(run_dir), device)

    @property
    def dim(self) -> int:
        return int(self.model.embed_dim)

    @property
    def fingerprint(self) -> str:
        """Model fingerprint (see `model_fingerprint`); needs the run folder."""
        if self._fingerprint is None:
            if self.run_dir is None:
                raise QueryError("this encoder has no run folder to fingerprint")
            self._fingerprint = model_fingerprint(self.run_dir)
        return self._fingerprint

    def resolve(self, name: str) -> str:
        """A modality name of the model, or a kind/flag (image, audio, lidar, ...) naming exactly one."""
        if name in self.kinds:
            return name
        kind = FLAG_KINDS.get(name)
        matches = [m for m, k in self.kinds.items() if k == kind]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise QueryError(f"{name!r} matches modalities {matches}; name one of them")
        raise QueryError(f"unknown modality {name!r}; this model has: "
                         + ", ".join(f"{m} ({k})" for m, k in self.kinds.items()))

    def check(self, modality: str, value) -> None:
        """Validate one raw value of a modality before encoding; raises QueryError naming it."""
        kind = self.kinds[modality]
        if kind == "text":
            if not isinstance(value, str) or not value.strip():
                raise QueryError(f"{modality}: expected a non-empty string")
            if len(value) > MAX_TEXT_CHARS:
                raise QueryError(f"{modality}: text longer than {MAX_TEXT_CHARS} characters")
            return
        arr = np.asarray(value)
        if kind == "image" and (arr.ndim not in (2, 3) or min(arr.shape[:2]) < 1
                                or (arr.ndim == 3 and arr.shape[2] not in (1, 3, 4))):
            raise QueryError(f"{modality}: expected an image [H, W] or [H, W, 1|3|4], got shape {arr.shape}")
        if kind == "sequence":
            n_feat = _first_in_channels(self.model.towers[modality])
            if arr.ndim != 2 or arr.shape[0] < 1 or (n_feat is not None and arr.shape[1] != n_feat):
                raise QueryError(f"{modality}: expected feature frames [T, {n_feat or 'F'}] (e.g. MFCCs), "
                                 f"got shape {arr.shape}")
        if kind == "range" and (arr.ndim != 2 or min(arr.shape) < 8):
            raise QueryError(f"{modality}: expected a range image [H, W] (H, W >= 8), got shape {arr.shape}")

    def inputs(self, modality: str, values: list) -> dict[str, torch.Tensor]:
        """Raw values of one modality -> the model's input batch (the same transforms as training)."""
        kind, data = self.kinds[modality], self.cfg.data
        if kind == "image":
            arrays = [np.asarray(v)[..., :3] if np.ndim(v) == 3 else v for v in values]  # drop alpha
            x = T.image_to_tensor(arrays, data.image_size)
            if x.shape[1] != self.image_channels:
                x = x.mean(1, keepdim=True).expand(-1, self.image_channels, -1, -1)
            return {modality: x}
        if kind == "text":
            return {modality: self._tokenizer(modality)(list(values))}
        if kind == "sequence":
            x, lengths = T.sequence_to_tensor(values, data.max_frames)
            return {modality: x, f"{modality}_len": lengths}
        if kind == "range":
            return {modality: T.range_to_tensor(values)}
        raise QueryError(f"{modality}: unknown kind {kind!r}")

    def _tokenizer(self, modality: str):
        """The tokenizer training used for this text modality (the tower's own, else OpenCLIP BPE)."""
        if modality not in self._tokenizers:
            spec = _tokenizer_specs(self.cfg).get(modality)
            length = self.cfg.data.context_length
            self._tokenizers[modality] = T.make_tokenizer(length, spec) if spec else T.make_tokenizer(length)
        return self._tokenizers[modality]

    @torch.no_grad()
    def encode(self, modality: str, values: list, check: bool = True) -> np.ndarray:
        """Embed raw values (strings, uint8 images, [T, F] frames, range images) -> float32 [N, D]."""
        modality = self.resolve(modality)
        if check:
            for v in values:
                self.check(modality, v)
        batch = {k: v.to(self.device) for k, v in self.inputs(modality, values).items()}
        try:
            emb = self.model.encode(modality, batch)
        except RuntimeError as err:  # a tower refusing an input shape the checks above let through
            shapes = sorted({tuple(np.shape(v)) for v in values if not isinstance(v, str)})
            raise QueryError(f"{modality}: the model rejected inputs of shape {shapes}: {err}") from None
        out = emb.float().cpu().numpy().astype(np.float32)
        if not np.isfinite(out).all():
            raise QueryError(f"{modality}: the input gives a non-finite embedding (values out of range?)")
        return out

    def encode_file(self, modality: str, source: bytes | str | Path, name: str | None = None) -> np.ndarray:
        """Embed one query file: an image (PNG/JPEG/...) or a .npy array, by the modality's kind."""
        modality = self.resolve(modality)
        kind = self.kinds[modality]
        name = name or (str(source) if isinstance(source, (str, Path)) else "upload")
        if isinstance(source, (str, Path)) and not Path(source).is_file():
            raise QueryError(f"{source}: no such file")
        if kind == "image":
            value = read_image(source, self.image_channels, name)
        elif kind == "text":
            raise QueryError(f"{modality} is a text modality: pass the text itself, not a file ({name})")
        else:
            value = read_npy(source, name)
        try:
            self.check(modality, value)
        except QueryError as err:
            raise QueryError(f"{name}: {err}") from None
        return self.encode(modality, [value], check=False)
