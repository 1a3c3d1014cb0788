"""The registry of modality kinds: one module per kind, each owning all that is specific to its data.

Adding a kind is a module with a `Kind` subclass and one `register` line below.
"""

from __future__ import annotations

from typing import Any

import torch

from jointspace.errors import UsageError
from jointspace.kinds.base import BadCell, Kind, Prep, QueryError, Size
from jointspace.kinds.content import block_means
from jointspace.kinds.image import ImageKind
from jointspace.kinds.points import PointsKind
from jointspace.kinds.range import RangeKind
from jointspace.kinds.sequence import SequenceKind
from jointspace.kinds.text import TextKind
from jointspace.kinds.video import VideoKind

_KINDS: dict[str, Kind] = {}


def register(kind: Kind) -> Kind:
    """Add a kind to the registry under its name, and its size fields to `Prep.SIZES` (kinds may share a
    size, such as `image_size`, when they declare it alike)."""
    if kind.name in _KINDS:
        raise UsageError(f"kind {kind.name!r} registered twice")
    for size in kind.sizes:
        known = Prep.SIZES.get(size.name)
        if known is not None and (known.default, known.minimum) != (size.default, size.minimum):
            raise UsageError(f"kind {kind.name!r}: size {size.name!r} is declared with another default or minimum")
        Prep.SIZES.setdefault(size.name, size)
    _KINDS[kind.name] = kind
    return kind


register(ImageKind())
register(TextKind())
register(SequenceKind())
register(RangeKind())
register(PointsKind())
register(VideoKind())

KINDS = tuple(_KINDS)


def get_kind(name: str) -> Kind:
    """The registered kind `name`; unknown names raise ValueError listing the known ones."""
    if name not in _KINDS:
        raise UsageError(f"unknown modality kind {name!r} (known: {', '.join(_KINDS)})")
    return _KINDS[name]


def all_kinds() -> list[Kind]:
    return list(_KINDS.values())


def decode_file(ext: str, data: bytes) -> Any:
    """Decode one stored file by its extension, with the kind that reads that extension."""
    for kind in _KINDS.values():
        if ext in kind.extensions:
            return kind.decode(ext, data)
    raise UsageError(f"unknown extension .{ext}")


def kind_for_extension(ext: str) -> str | None:
    """The first registered kind that reads files with this extension (.npy: sequence), or None."""
    return next((k.name for k in _KINDS.values() if ext.lower() in k.extensions), None)


def recognise_column(column: str, values: list[str]) -> str | None:
    """The kind of a manifest column by its name and values (fallback kinds last), or None."""
    ordered = sorted(_KINDS.values(), key=lambda k: k.fallback)
    return next((k.name for k in ordered if k.recognise(column, values)), None)


def recognise_folder(folder: str, exts: set[str]) -> str | None:
    """The kind of a modality subfolder by its name and its files' extensions: a kind whose folder words
    name it first, then by extension alone (fallback kinds last), or None."""
    fits = [k for k in _KINDS.values() if k.recognise_folder(folder, exts)]
    fits.sort(key=lambda k: (not k.names_folder(folder), k.fallback))
    return fits[0].name if fits else None


def kind_for_alias(word: str) -> str | None:
    """The kind a query word names ("audio", "lidar", "points", ...), or None."""
    word = word.lower()
    return next((k.name for k in _KINDS.values() if word == k.name or word in k.aliases), None)


def content_vector(kind: str, value: Any):
    """A value's content as a short unit vector (its kind's `content_cells` grid of block means, centred)
    for finding near copies; None for kinds whose values are compared by content hash only."""
    cells = get_kind(kind).content_cells
    return block_means(value, cells) if cells else None


def with_role(kinds: dict[str, str], role: str) -> str | None:
    """The first modality whose kind has `role` ("captions", "picture", "spatial") set, or None."""
    return next((m for m, k in kinds.items() if getattr(get_kind(k), role)), None)


def preview_modality(kinds: dict[str, str]) -> str | None:
    """The modality whose values become a sample's thumbnail (lowest preview rank), or None."""
    ranked = [(get_kind(k).preview_rank, m) for m, k in kinds.items() if get_kind(k).preview_rank is not None]
    return min(ranked)[1] if ranked else None


def to_inputs(values: dict[str, list], kinds: dict[str, str], prep: Prep) -> dict[str, torch.Tensor]:
    """Decoded per-modality lists -> model input tensors, each by its kind."""
    inputs: dict[str, torch.Tensor] = {}
    for name, vals in values.items():
        inputs.update(get_kind(kinds[name]).to_tensors(name, vals, prep))
    return inputs


def ready(batch: dict[str, torch.Tensor], kinds: dict[str, str]) -> dict[str, torch.Tensor]:
    """A batch with each modality's tensor as its tower takes it (`Kind.on_device`, where the batch is)."""
    return {k: get_kind(kinds[k]).on_device(v) if k in kinds else v for k, v in batch.items()}


def fit_prep(values: dict[str, list], kinds: dict[str, str], prep: Prep) -> Prep:
    """Fix what each modality's normalisation still needs from these values (e.g. max_range)."""
    for name, vals in values.items():
        prep = get_kind(kinds[name]).fit(name, vals, prep)
    return prep


def input_channels(inputs: dict[str, torch.Tensor], kinds: dict[str, str]) -> dict[str, int]:
    """Channels of each modality's input tensor, where its kind has them."""
    out = {}
    for name, kind in kinds.items():
        if name in inputs and (c := get_kind(kind).channels_of(inputs[name])) is not None:
            out[name] = c
    return out


def size_fields() -> dict[str, Size]:
    """Every registered kind's size fields, in registration order (`data.<name>` config fields)."""
    return dict(Prep.SIZES)


def describe() -> list[dict]:
    """Registered kinds: name, extensions, aliases, default tower, roles."""
    roles = ("spatial", "captions", "picture")
    return [{"name": k.name, "extensions": list(k.extensions), "aliases": list(k.aliases),
             "folder_words": list(k.folder_words), "default_tower": k.default_tower, "roles": [r for r in roles if getattr(k, r)]}
            for k in _KINDS.values()]


__all__ = ["KINDS", "BadCell", "Kind", "Prep", "QueryError", "Size", "all_kinds", "content_vector", "decode_file", "describe", "fit_prep",
           "get_kind", "input_channels", "kind_for_alias", "kind_for_extension", "preview_modality", "recognise_column",
           "recognise_folder", "register", "size_fields", "to_inputs", "with_role"]
