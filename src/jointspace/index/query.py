"""Encode queries of any modality (text, or a file its kind parses; raw vectors) with a run."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from jointspace.config import RunConfig
from jointspace.kinds import QueryError, get_kind, kind_for_alias, with_role
from jointspace.kinds.base import read_npy_query
from jointspace.kinds.image import read_image  # noqa: F401  (re-exported for callers of the query API)
from jointspace.model import JointModel
from jointspace.run_dir import RunInfo
from jointspace.runs import load_run, model_fingerprint, resolve_device, run_prep


def read_npy(source: bytes | str | Path, name: str = "array") -> np.ndarray:
    """Load a NumPy .npy array (path or bytes) without unpickling; finite float32."""
    return read_npy_query(source, name)


def parse_vector(values, dim: int, name: str = "vector") -> np.ndarray:
    """A raw query vector (list or array of `dim` floats) -> L2-normalised float32 [1, dim]."""
    try:
        vec = np.asarray(values, dtype=np.float64).reshape(-1)
    except (TypeError, ValueError) as err:
        raise QueryError(f"{name}: not a list of numbers ({err})") from None
    if vec.shape[0] != dim:
        raise QueryError(f"{name}: has {vec.shape[0]} values, the index has dimension {dim}")
    peak = float(np.abs(vec).max()) if vec.size else 0.0
    if not np.isfinite(vec).all() or peak == 0.0:
        raise QueryError(f"{name}: must be finite and non-zero")
    vec = vec / peak  # any finite float64 scale normalises without overflow or underflow
    return (vec / np.linalg.norm(vec)).astype(np.float32)[None]


class Encoder:
    """A trained run ready to embed raw values of any of its modalities into the joint space."""

    def __init__(self, cfg: RunConfig, model: JointModel, info: RunInfo, run_dir: Path | None = None,
                 device: str = "cpu"):
        self.cfg, self.model, self.info = cfg, model.eval(), info
        self.run_dir = Path(run_dir).resolve() if run_dir else None
        self.device = resolve_device(device)
        self.model.to(self.device)
        self.kinds: dict[str, str] = {m: info.kinds[m] for m in model.modalities}
        self.prep = run_prep(cfg, info)
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
        """A modality name of the model, or a word naming a kind (image, audio, lidar, points, ...) that
        exactly one of its modalities has."""
        if name in self.kinds:
            return name
        kind = kind_for_alias(name)
        matches = [m for m, k in self.kinds.items() if k == kind]
        if len(matches) == 1:
            return matches[0]
        if len(matches) > 1:
            raise QueryError(f"{name!r} matches modalities {matches}; name one of them")
        raise QueryError(f"unknown modality {name!r}; this model has: "
                         + ", ".join(f"{m} ({k})" for m, k in self.kinds.items()))

    def text_modality(self) -> str:
        """The modality text queries go to when none is named: the model's caption modality."""
        name = with_role(self.kinds, "captions")
        if name is None:
            raise QueryError("this model has no text modality; query it with a file or a vector")
        return name

    def modality_words(self, captions: bool = False) -> list[str]:
        """Every word `resolve` takes for a modality queried with a file (`captions`: with a text)."""
        words: set[str] = set()
        for m, k in self.kinds.items():
            kind = get_kind(k)
            if bool(kind.captions) != captions:
                continue
            words.add(m)
            if list(self.kinds.values()).count(k) == 1:
                words.update([kind.name, *kind.aliases])
        return sorted(words)

    def modality_for_file(self, path: str | Path, data: bytes | None = None) -> str:
        """The one modality whose kind reads files with this extension (with none: whose kind's files
        start as `data` does); else QueryError asking for it."""
        ext = Path(path).suffix.lstrip(".").lower()
        matches = [m for m, k in self.kinds.items() if ext in get_kind(k).extensions]
        if not matches and data:
            matches = [m for m, k in self.kinds.items() if any(data.startswith(s) for s in get_kind(k).signatures)]
        if len(matches) != 1:
            raise QueryError(f"{path}: say its modality with --modality (this model has: "
                             + ", ".join(f"{m} ({k})" for m, k in self.kinds.items()) + ")")
        return matches[0]

    def check(self, modality: str, value) -> None:
        """Validate one raw value of a modality before encoding; raises QueryError naming it."""
        get_kind(self.kinds[modality]).check_query(modality, value, self.model.towers[modality])

    def inputs(self, modality: str, values: list) -> dict[str, torch.Tensor]:
        """Raw values of one modality -> the model's input batch (the run's own Prep, as in training)."""
        try:
            return get_kind(self.kinds[modality]).to_tensors(modality, list(values), self.prep)
        except ValueError as err:  # e.g. a run that recorded no range scale
            raise QueryError(f"{modality}: {err}") from None

    @torch.no_grad()
    def encode(self, modality: str, values: list, check: bool = True) -> np.ndarray:
        """Embed raw values (strings, uint8 images, arrays, as a kind stores them) -> float32 [N, D]."""
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
        """Embed one query file (an image, a .npy array, ...), parsed by the modality's kind."""
        modality = self.resolve(modality)
        name = name or (str(source) if isinstance(source, (str, Path)) else "upload")
        if isinstance(source, (str, Path)) and not Path(source).is_file():
            raise QueryError(f"{source}: no such file")
        value = get_kind(self.kinds[modality]).read_query(source, self.prep, modality, name)
        try:
            self.check(modality, value)
        except QueryError as err:
            raise QueryError(f"{name}: {err}") from None
        return self.encode(modality, [value], check=False)
