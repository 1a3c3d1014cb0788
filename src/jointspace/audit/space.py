"""What an audit looks at: every sample of the chosen splits, embedded by the run in each of its modalities,
with a content hash per modality and, for the HTML page, the values themselves."""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from jointspace.data.shards import DataError
from jointspace.data.sources import shards_arg
from jointspace.evaluate.embed import embed_split
from jointspace.kinds import get_kind
from jointspace.losses.binding import binding_pairs
from jointspace.runs import load_run, load_run_split, resolve_device

TRAIN = "train"


@dataclass
class Space:
    """N samples (of every audited split, one after the other): keys, split, label, one L2-normalised
    embedding [N, D] per modality (none for a run without a joint space: a classifier's), one content
    hash per modality (hex), and the decoded values (for previews and content vectors; empty when the
    space was built from vectors alone), the modality pairs the run's loss aligned and its logit scale."""

    keys: list[str]
    splits: np.ndarray  # [N] split names (str)
    labels: np.ndarray  # [N] int64
    emb: dict[str, np.ndarray]
    kinds: dict[str, str]
    class_names: list[str] = field(default_factory=list)
    hashes: dict[str, np.ndarray] = field(default_factory=dict)  # modality -> [N] hex digests
    values: dict[str, list] = field(default_factory=dict)
    labelled: bool = True
    pairs: list[tuple[str, str]] | None = None  # the modality pairs the run trained (None: every pair)
    logit_scale: float = 1 / 0.07  # the run's logit scale (its logits: scale x cosine); CLIP's initial by default

    def __len__(self) -> int:
        return len(self.keys)

    @property
    def modalities(self) -> list[str]:
        return list(self.kinds)

    @property
    def classed(self) -> bool:
        """Labelled with two classes or more: what a probe needs (the label finder, the class margins)."""
        return self.labelled and len(set(self.labels.tolist())) > 1

    def joint(self) -> np.ndarray:
        """The sample's point in the joint space: its modalities' embeddings side by side, scaled so that
        the inner product of two samples is the mean of their per-modality cosines."""
        return np.ascontiguousarray(np.concatenate([self.emb[m] for m in self.modalities], axis=1)
                                    / np.sqrt(len(self.emb)), dtype=np.float32)

    def class_name(self, label: int) -> str:
        return self.class_names[label] if 0 <= label < len(self.class_names) else str(label)


def content_hash(value) -> str:
    """A digest of one decoded value: its dtype, shape and bytes (arrays) or its UTF-8 text."""
    h = hashlib.blake2b(digest_size=16)
    if isinstance(value, str):
        h.update(b"str\0" + value.encode("utf-8"))
    else:
        arr = np.ascontiguousarray(np.asarray(value))
        h.update(f"{arr.dtype.str}{arr.shape}\0".encode() + arr.tobytes())
    return h.hexdigest()


def _split_values(data, m: str, kind: str) -> list:
    return data.captions[m] if get_kind(kind).captions else data.raw[m]


def load_space(run_dir: str | Path, shards: str | Path, splits: list[str] | None = None, device: str = "auto",
               batch_size: int = 512, contents: bool = True) -> Space:
    """Embed `splits` (default: every split of the data) of `shards` with the run; modalities are the run's
    that the data has. `contents=False`: embeddings alone (no decoded values kept, no content hashes)."""
    cfg, model, info = load_run(run_dir)
    source = shards_arg(shards, cfg.data)
    have = source.info["modalities"]
    modalities = [m for m in cfg.data.modalities if m in have and m in model.towers]
    if not modalities:
        raise DataError(f"{shards}: none of the run's modalities ({', '.join(cfg.data.modalities)}) are in it")
    splits = audited_splits(source, shards, splits)
    dev = resolve_device(device)
    model = model.to(dev)
    parts = []
    for split in splits:
        data = load_run_split(cfg, info, source, split, modalities, keep_raw=contents)
        emb = embed_split(model, data, batch_size=batch_size, device=dev)
        parts.append((split, data, {m: e.numpy().astype(np.float32) for m, e in emb.items()}))
    space = _joined(parts, contents)
    space.pairs = trained_pairs(cfg, modalities)
    space.logit_scale = float(model.logits.scale().detach())
    return space


def audited_splits(source, shards: str | Path, splits: list[str] | None) -> list[str]:
    """`splits` (default: every split the data has), each checked to be in the data."""
    splits = splits or [s for s in source.info.get("splits", {}) if source.has_split(s)]
    missing = [s for s in splits if not source.has_split(s)]
    if missing:
        raise DataError(f"{shards}: no split {missing[0]!r} (has: {', '.join(source.info.get('splits', {}))})")
    return splits


def classified_space(parts: list[tuple]) -> tuple[Space, np.ndarray]:
    """The Space of a run without a joint space (a classifier's: keys, splits, labels, content hashes and
    values; no embeddings) from its task's (split, SplitData, class probabilities) parts, and the
    probabilities [N, C] of its samples in the Space's order."""
    return _joined([(split, data, {}) for split, data, _ in parts]), np.concatenate([p for *_, p in parts])


def trained_pairs(cfg, modalities: list[str]) -> list[tuple[str, str]] | None:
    """The pairs of `modalities` the run's loss aligned (its explicit pairs, or its anchor's), or None where
    it aligned every pair."""
    loss = getattr(cfg, "loss", None)
    anchor, explicit = getattr(loss, "anchor", None), getattr(loss, "pairs", None)
    if not explicit and anchor is None:
        return None
    pairs = binding_pairs(list(cfg.data.modalities), anchor, explicit)
    return [(a, b) for a, b in pairs if a in modalities and b in modalities]


def _joined(parts: list, contents: bool = True) -> Space:
    """One Space of every split's SplitData and embeddings (with their values and content hashes unless
    `contents` is False)."""
    first, embedded = parts[0][1], bool(parts[0][2])
    kinds = {m: k for m, k in first.kinds.items() if m in parts[0][2] or not embedded}
    values = {m: [v for _, d, _ in parts for v in _split_values(d, m, kinds[m])] for m in kinds} if contents else {}
    return Space(
        keys=[k for _, d, _ in parts for k in d.keys],
        splits=np.array([s for s, d, _ in parts for _ in range(len(d))], dtype=object),
        labels=np.concatenate([d.labels.numpy() for _, d, _ in parts]).astype(np.int64),
        emb={m: np.concatenate([e[m] for _, _, e in parts]) for m in kinds} if embedded else {},
        kinds=kinds,
        class_names=[str(c) for c in first.class_names],
        hashes={m: np.array([content_hash(v) for v in vals], dtype=object) for m, vals in values.items()},
        values=values,
        labelled=first.labelled,
    )
