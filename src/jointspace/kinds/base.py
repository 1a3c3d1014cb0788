"""What every modality kind provides, and `Prep`: how a run turns values into tensors (fixed per run).

A kind owns everything about one sort of data: how a value is stored in a shard and read back, how a
manifest column is recognised and checked, how a batch of values becomes tensors (with normalisation
fixed per run), how a query file is parsed and checked, and how a sample is previewed and drawn.
Nothing outside `kinds/` branches on a kind's name.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, ClassVar

import numpy as np
import torch
from torch import nn

from jointspace.errors import UsageError


class QueryError(UsageError):
    """A query cannot be encoded; the message names the modality, file or field."""


class BadCell(Exception):
    """One unusable manifest cell: "column: reason"."""


MAX_ARRAY_VALUES = 4_000_000


@dataclass(frozen=True)
class Size:
    """One size field a kind declares (a number that fixes its tensors' shape): its name, default, least
    value, and one line saying what it bounds. Each is a `data.<name>` config field and a `Prep` size."""

    name: str
    default: int
    minimum: int = 1
    doc: str = ""


PREP_DICTS = ("channels", "tokenizers", "max_range")


@dataclass(init=False)
class Prep:
    """How values become model inputs, fixed for a run and recorded in its run.json: the sizes every
    registered kind declares (`Kind.sizes`: `image_size`, `context_length`...; read as `prep.image_size`),
    and per modality its input channels, tokenizer spec and metric range scale."""

    sizes: dict[str, int]
    channels: dict[str, int]  # images: target channels; range: 1; points: 3|4
    tokenizers: dict[str, str]  # text modality -> spec (absent: OpenCLIP BPE)
    max_range: dict[str, float]  # range/points modality -> metres that map to 1

    SIZES: ClassVar[dict[str, Size]] = {}  # every registered kind's size fields (filled by kinds.register)

    def __init__(self, sizes: dict[str, int] | None = None, channels: dict[str, int] | None = None,
                 tokenizers: dict[str, str] | None = None, max_range: dict[str, float] | None = None,
                 **named: int):
        given = {**(sizes or {}), **named}
        unknown = [k for k in given if k not in self.SIZES]
        if unknown:
            raise UsageError(f"Prep: unknown size field {unknown[0]!r} (known: {', '.join(self.SIZES)})")
        self.sizes = {**{k: s.default for k, s in self.SIZES.items()}, **given}
        self.channels, self.tokenizers = dict(channels or {}), dict(tokenizers or {})
        self.max_range = dict(max_range or {})

    def __getattr__(self, name: str) -> int:
        sizes = self.__dict__.get("sizes")
        if sizes is not None and name in sizes:
            return sizes[name]
        raise AttributeError(f"Prep has no field or size {name!r}")

    def to_json(self) -> dict:
        """Flat: each size at the top level (as run.json files have always had them), then the dicts."""
        return {**self.sizes, **{k: dict(getattr(self, k)) for k in PREP_DICTS}}

    @classmethod
    def from_json(cls, raw: dict | None) -> Prep:
        """A recorded Prep (flat sizes, or a `sizes` mapping); keys no registered kind knows are ignored."""
        raw = dict(raw or {})
        sizes = {**raw.pop("sizes", {}), **{k: v for k, v in raw.items() if k in cls.SIZES}}
        return cls({k: v for k, v in sizes.items() if k in cls.SIZES}, **{k: raw[k] for k in PREP_DICTS if k in raw})

    def updated(self, **kw) -> Prep:
        """A copy with sizes or fields replaced (dict fields merged)."""
        out = Prep(self.sizes, self.channels, self.tokenizers, self.max_range)
        for k, v in kw.items():
            if k in PREP_DICTS or k == "sizes":
                getattr(out, k).update(v)
            elif k in self.SIZES:
                out.sizes[k] = v
            else:
                raise UsageError(f"Prep: unknown field {k!r}")
        return out


class Kind:
    """Base class: subclasses set the attributes and override what differs."""

    name: str = ""
    extensions: tuple[str, ...] = ()  # stored file extensions read as this kind (the first is written)
    signatures: tuple[bytes, ...] = ()  # leading bytes of the files it reads (a query file with no extension)
    aliases: tuple[str, ...] = ()  # words that name the kind in queries and manifest column names
    folder_words: tuple[str, ...] = ()  # words in a modality subfolder's name that name it (rgb, lidar...)
    word_needed: bool = False  # a subfolder is this kind only when its name says so (not by extension alone)
    grid_files: tuple[str, ...] = ()  # files beside a folder of values that describe them all (angle grids)
    default_tower: str = ""
    spatial: bool = False  # inputs are [C, H, W] maps (early / intermediate fusion can stack them)
    captions: bool = False  # values are captions: zero-shot prompts, caption positives, text tables
    picture: bool = False  # values are pictures: class grids, generative augmentation
    preview_rank: int | None = None  # lower ranks become a sample's thumbnail first; None: never
    fallback: bool = False  # recognised only when no other kind claims a manifest column
    ranged: bool = False  # values are metric distances, scaled by a per-run Prep.max_range
    sizes: tuple[Size, ...] = ()  # size fields it reads from Prep (each a `data.<name>` config field)
    content_cells: int = 0  # near copies (audit): values as block means on this grid (kinds.content); 0: by hash

    # ---- storage ----
    def encode(self, value: Any) -> tuple[str, bytes]:
        """One value -> (file extension, bytes) in a shard."""
        raise NotImplementedError

    def decode(self, ext: str, data: bytes) -> Any:
        """Stored bytes -> value."""
        raise NotImplementedError

    # ---- manifests ----
    def recognise(self, column: str, values: list[str]) -> bool:
        """Whether a manifest column (its name, its lower-cased string values) holds this kind."""
        return column.lower() in self.aliases

    def check_cell(self, value: Any, base: Path, column: str) -> tuple[Any, Any]:
        """Validate one manifest cell: (value to store, shape signature that must agree over rows); raises BadCell."""
        raise NotImplementedError

    # ---- folders of files (`<class>/<modality>/<stem>.<ext>`) ----
    def names_folder(self, folder: str) -> bool:
        """Whether a subfolder's name holds one of `folder_words` (words split at non-letters; plural s)."""
        words = {w for tok in re.split(r"[^a-z0-9]+", folder.lower()) for w in (tok, tok.removesuffix("s"))}
        return bool(words & set(self.folder_words))

    def recognise_folder(self, folder: str, exts: set[str]) -> bool:
        """Whether a modality subfolder (its name, its files' lower-case extensions) holds this kind."""
        return bool(exts) and exts <= set(self.extensions) and (not self.word_needed or self.names_folder(folder))

    def folder_value(self, path: Path, root: Path) -> Any:
        """What one file of a modality subfolder gives `check_cell`: its path relative to `root`."""
        return path.relative_to(root).as_posix()

    def read_grid(self, arrays: dict[str, np.ndarray], values: Iterable[np.ndarray], where: str) -> dict:
        """The `grid_files` arrays (by stem) checked against the values they describe: a JSON-able grid."""
        raise UsageError(f"{where}: {self.name} values have no grid")

    def to_points(self, value: Any, grid: dict) -> np.ndarray:
        """One value as 3-D points [N, 3] in the sensor frame, with its `read_grid` grid."""
        raise UsageError(f"{self.name} values cannot be turned into 3-D points")

    # ---- tensors ----
    def fit(self, name: str, values: list, prep: Prep) -> Prep:
        """Fill in what this modality's normalisation needs from a split's values (when not yet fixed)."""
        return prep

    def to_tensors(self, name: str, values: list, prep: Prep) -> dict[str, torch.Tensor]:
        """A batch of values -> {name: tensor, ...} (also `<name>_len` for variable-length kinds)."""
        raise NotImplementedError

    def channels_of(self, tensor: torch.Tensor) -> int | None:
        """Input channels a batch tensor of this kind has (recorded in Prep.channels), or None."""
        return None

    def on_device(self, tensor: torch.Tensor) -> torch.Tensor:
        """A batch tensor as the tower takes it, made where it is used (on the device): kinds stored
        compactly (images as uint8) are normalised here. Idempotent: a ready tensor comes back as is."""
        return tensor

    def tower_defaults(self, name: str, prep: Prep) -> dict[str, Any]:
        """Tower constructor parameters the data fixes (used when the tower accepts them and the config
        does not set them)."""
        return {}

    # ---- queries ----
    def read_query(self, source: bytes | str | Path, prep: Prep, name: str, label: str) -> Any:
        """A query file (path or uploaded bytes) -> value; raises QueryError naming `label`."""
        raise NotImplementedError

    def check_query(self, name: str, value: Any, tower: nn.Module | None) -> None:
        """Validate one raw query value before encoding; raises QueryError naming the modality."""

    # ---- pictures ----
    def preview(self, value: Any) -> np.ndarray:
        """A 2-D (grey) or [H, W, 3] uint8 thumbnail of one value."""
        raise NotImplementedError

    def stack_previews(self, values: list) -> np.ndarray:
        """Values kept for plots, stacked into one array (padded where lengths differ)."""
        return np.stack([np.asarray(v) for v in values])

    def draw(self, ax, value: np.ndarray) -> None:
        """Draw one stacked preview value into a matplotlib axis."""
        ax.imshow(self.preview(value), cmap="gray")


class NpyKind(Kind):
    """A kind whose values are float arrays stored as .npy (never unpickled), recognised in manifests as
    .npy columns whose name holds one of `column_words` (none: any .npy column)."""

    extensions = ("npy",)
    signatures = (b"\x93NUMPY",)
    column_words: tuple[str, ...] = ()

    def encode(self, value: Any) -> tuple[str, bytes]:
        return save_npy(value)

    def decode(self, ext: str, data: bytes) -> np.ndarray:
        return load_npy(data)

    def recognise(self, column: str, values: list[str]) -> bool:
        named = not self.column_words or any(w in column.lower() for w in self.column_words)
        return named and npy_share(values) > 0.5

    def read_query(self, source: bytes | str | Path, prep: Prep, name: str, label: str) -> np.ndarray:
        return read_npy_query(source, label)


# ---- helpers shared by the array kinds ----

def save_npy(value: Any) -> tuple[str, bytes]:
    """An array (or a path to a .npy file) -> ("npy", float32 .npy bytes)."""
    if isinstance(value, (str, Path)):
        value = np.load(value, allow_pickle=False)
    buf = io.BytesIO()
    np.save(buf, np.asarray(value, dtype=np.float32), allow_pickle=False)
    return "npy", buf.getvalue()


def load_npy(data: bytes) -> np.ndarray:
    """.npy bytes -> array, never unpickling."""
    return np.load(io.BytesIO(data), allow_pickle=False)


def read_npy_query(source: bytes | str | Path, label: str = "array") -> np.ndarray:
    """Load a NumPy .npy array (path or bytes) without unpickling; finite float32."""
    data = Path(source).read_bytes() if isinstance(source, (str, Path)) else source
    if not data.startswith(b"\x93NUMPY"):
        raise QueryError(f"{label}: not a .npy array (no NumPy header; save it with numpy.save)")
    try:
        arr = np.load(io.BytesIO(data), allow_pickle=False)
    except (ValueError, OSError, EOFError, TypeError) as err:
        raise QueryError(f"{label}: not a .npy array ({type(err).__name__}: {err})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf":
        raise QueryError(f"{label}: expected a numeric .npy array, got dtype {getattr(arr, 'dtype', type(arr))}")
    if arr.size > MAX_ARRAY_VALUES:
        raise QueryError(f"{label}: {arr.size} values is more than {MAX_ARRAY_VALUES}")
    arr = arr.astype(np.float32)
    if not np.isfinite(arr).all():
        raise QueryError(f"{label}: contains NaN or infinite values")
    return arr


def resolve_path(value: Any, base: Path) -> Path:
    """A manifest path, relative to the manifest's folder unless absolute; a relative path that leaves
    the folder (`../../etc/passwd`) is a BadCell: only an absolute path may point elsewhere."""
    path = Path(str(value)).expanduser()
    if path.is_absolute():
        return path
    try:
        inside = (base / path).resolve()
    except (OSError, RuntimeError) as err:  # a symbolic link loop
        raise BadCell(f"{value}: cannot be resolved ({err})") from None
    if not inside.is_relative_to(base.resolve()):
        raise BadCell(f"{value}: a relative path that leaves the manifest's folder ({inside}); "
                      "give an absolute path to read files elsewhere")
    return base / path


def npy_share(values: list[str]) -> float:
    """Share of values that are local .npy paths."""
    return sum(v.endswith(".npy") and "://" not in v for v in values) / max(len(values), 1)


def check_array_cell(value: Any, base: Path, column: str, kind: str) -> tuple[Any, np.ndarray]:
    """A manifest cell holding an array (inline list or .npy path): (value to store, array); 2-D, finite."""
    if isinstance(value, list):
        try:
            arr = out = np.asarray(value, dtype=np.float32)
        except ValueError as err:
            raise BadCell(f"{column}: not a numeric array ({err})") from None
    else:
        path = resolve_path(value, base)
        if not path.is_file():
            raise BadCell(f"{column}: missing file {path}")
        try:
            arr, out = np.load(path, allow_pickle=False), path
        except Exception as err:  # noqa: BLE001 - any unreadable file makes the row bad
            raise BadCell(f"{column}: unreadable {kind} file {path} ({type(err).__name__}: {err})") from None
    if not isinstance(arr, np.ndarray) or arr.dtype.kind not in "biuf" or arr.ndim != 2:
        got = f"{arr.dtype} array of shape {arr.shape}" if isinstance(arr, np.ndarray) else type(arr).__name__
        raise BadCell(f"{column}: expected a 2-D numeric array, got {got}")
    if not np.isfinite(arr).all():
        raise BadCell(f"{column}: non-finite values")
    return out, arr


def scaled_grey(x: np.ndarray) -> np.ndarray:
    """Any float array -> uint8 scaled to its own min..max."""
    x = np.asarray(x, dtype=np.float32)
    lo, hi = float(np.nanmin(x)), float(np.nanmax(x))
    return np.nan_to_num((x - lo) / max(hi - lo, 1e-6) * 255).astype(np.uint8)


def first_conv_channels(tower: nn.Module | None) -> int | None:
    """Input channels/features of a tower's first convolution or linear layer, if it has one."""
    for module in (tower.modules() if tower is not None else ()):
        if isinstance(module, (nn.Conv1d, nn.Conv2d)):
            return int(module.in_channels)
        if isinstance(module, nn.Linear):
            return int(module.in_features)
    return None
