"""Mined hard negatives: the parquet file `jointspace mine` writes (one row per anchor and negative), read
back by training (`data.hard_negatives`), which draws `data.n_per_anchor` of each anchor's negatives per
epoch and adds their candidate-side inputs to the batch as extra candidates (`losses.extra`).

What a drawn negative is: each epoch, an anchor's mined negatives in a seeded random order (a pure
function of seed and epoch: a resumed run draws the same ones); with fewer than n_per_anchor mined, they
repeat; with none, the anchor's slots stay empty (left out of every row). An extra candidate that the
run's positive rule makes a positive of some anchor of the batch (its own sample, or its label or caption
under `loss.positives`) is masked as that anchor's positive, as the same candidate in the batch would be."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jointspace.config import RunConfig
from jointspace.data.dataset import SplitData
from jointspace.data.shards import DataError
from jointspace.errors import UsageError, require
from jointspace.kinds import ready
from jointspace.losses.binding import binding_pairs
from jointspace.losses.extra import WithExtra, extra_key
from jointspace.losses.masks import at_rows, positive_pairs, split_fields
from jointspace.losses.registry import extra_refusal, loss_class
from jointspace.outputs import atomic_file

COLUMNS = ("anchor_key", "negative_key", "rank", "score", "positive_score", "anchor_modality", "candidate_modality")
WHAT = "a hard-negatives file (jointspace mine, data.hard_negatives)"


@dataclass
class Negatives:
    """The rows of a hard-negatives file: anchor and negative keys, the negative's rank among all
    candidates (0: the most similar), its score and the anchor's own pair score (cosines); one modality
    pair for the whole file."""

    anchor_key: list[str]
    negative_key: list[str]
    rank: np.ndarray  # [R] int64
    score: np.ndarray  # [R] float32
    positive_score: np.ndarray  # [R] float32
    anchor_modality: str
    candidate_modality: str

    def __len__(self) -> int:
        return len(self.anchor_key)


def write_negatives(path: str | Path, rows: Negatives) -> None:
    """The parquet file of `rows` (pyarrow; written atomically: a reader never sees half of it)."""
    pa = require("parquet", "pyarrow", WHAT)
    pq = require("parquet", "pyarrow.parquet", WHAT)
    n = len(rows)
    table = pa.table({
        "anchor_key": pa.array(rows.anchor_key, pa.string()),
        "negative_key": pa.array(rows.negative_key, pa.string()),
        "rank": pa.array(np.asarray(rows.rank, dtype=np.int64)),
        "score": pa.array(np.asarray(rows.score, dtype=np.float32)),
        "positive_score": pa.array(np.asarray(rows.positive_score, dtype=np.float32)),
        "anchor_modality": pa.array([rows.anchor_modality] * n, pa.string()),
        "candidate_modality": pa.array([rows.candidate_modality] * n, pa.string()),
    })
    with atomic_file(Path(path)) as tmp:
        pq.write_table(table, tmp)


def read_negatives(path: str | Path) -> Negatives:
    """A hard-negatives file; one that is not one (unreadable, columns missing, several modality pairs)
    is a DataError naming it."""
    pq = require("parquet", "pyarrow.parquet", WHAT)
    try:
        table = pq.read_table(str(path))
    except (OSError, ValueError) as err:
        raise DataError(f"{path}: not a readable hard-negatives parquet file ({err})") from None
    missing = [c for c in COLUMNS if c not in table.column_names]
    if missing:
        raise DataError(f"{path}: no column {', '.join(missing)} (not a file of jointspace mine)")
    col = {c: table.column(c).to_pylist() for c in COLUMNS}
    pairs = set(zip(col["anchor_modality"], col["candidate_modality"], strict=True))
    if len(pairs) > 1:
        raise DataError(f"{path}: holds several modality pairs {sorted(pairs)}; mine one pair per file")
    anchor, candidate = next(iter(pairs)) if pairs else ("", "")
    return Negatives(col["anchor_key"], col["negative_key"], np.asarray(col["rank"], dtype=np.int64),
                     np.asarray(col["score"], dtype=np.float32), np.asarray(col["positive_score"], dtype=np.float32),
                     anchor, candidate)


def hard_negatives_of(cfg: RunConfig, data: SplitData, text_key: str | None, world_size: int) -> HardNegatives | None:
    """The run's mined negatives over its in-memory train split (None without data.hard_negatives); what
    cannot take them (a loss without extra candidates, several processes, a pair the run does not
    train) is one line."""
    path = cfg.data.hard_negatives
    if not path:
        return None
    if not loss_class(cfg.loss.name).takes_extra:
        raise UsageError(extra_refusal(cfg.loss.name))
    if world_size > 1:
        raise UsageError(f"data.hard_negatives: not available with data-parallel training yet (world size "
                         f"{world_size}); train in one process")
    if not Path(path).is_file():
        raise DataError(f"data.hard_negatives: no such file {path}")
    negatives = HardNegatives(path, data, cfg.data.n_per_anchor, cfg.loss.positives, text_key)
    pairs = binding_pairs(list(data.kinds), cfg.loss.anchor, cfg.loss.pairs)
    if not any(set(p) == {negatives.anchor, negatives.candidate} for p in pairs):
        raise DataError(f"{path}: mined for {negatives.anchor} -> {negatives.candidate}, a pair this run does "
                        f"not train ({pairs})")
    return negatives


class HardNegatives:
    """A train split's mined negatives by sample row, drawn per epoch and added to batches."""

    def __init__(self, path: str | Path, data: SplitData, n_per_anchor: int, positives: str,
                 text_key: str | None = None):
        rows = read_negatives(path)
        if not len(rows):
            raise DataError(f"{path}: holds no negatives (jointspace mine found none inside its window: widen "
                            "--range-max or lower --margin)")
        self.anchor, self.candidate = rows.anchor_modality, rows.candidate_modality
        for m in (self.anchor, self.candidate):
            if m not in data.kinds:
                raise DataError(f"{path}: mined for modality {m!r}, which this run does not train "
                                f"({', '.join(data.kinds)})")
        self.data, self.n, self.positives, self.text_key = data, n_per_anchor, positives, text_key
        anchors, negatives = _rows_of(path, data.keys, rows)
        order = np.lexsort((rows.rank, anchors))
        counts = np.bincount(anchors, minlength=len(data))
        self.starts, self.counts = np.cumsum(counts) - counts, counts
        self.values = negatives[order]
        self.picks = torch.full((len(data), n_per_anchor), -1, dtype=torch.long)

    def draw(self, seed: int, epoch: int) -> None:
        """This epoch's n_per_anchor negatives of every sample (-1: none mined); depends on (seed, epoch)."""
        device = self.data.labels.device
        if not len(self.values):
            self.picks = torch.full((len(self.counts), self.n), -1, dtype=torch.long, device=device)
            return
        rng = np.random.default_rng([seed, epoch, 0x4E4547])
        owner = np.repeat(np.arange(len(self.counts)), self.counts)
        shuffled = np.lexsort((rng.random(len(self.values)), owner))  # each anchor's negatives, shuffled
        slot = np.arange(self.n)[None, :] % np.maximum(self.counts, 1)[:, None]  # repeat when fewer mined
        picks = self.values[shuffled][np.minimum(self.starts[:, None] + slot, len(self.values) - 1)]
        self.picks = torch.from_numpy(np.where(self.counts[:, None] > 0, picks, -1)).long().to(device)

    def extend(self, batch: dict[str, torch.Tensor], idx: torch.Tensor,
               positives: torch.Tensor | None) -> tuple[dict[str, torch.Tensor], WithExtra]:
        """`batch` (the samples `idx`, rows of the split) with its anchors' drawn negatives as extra
        candidates [B, n, ...], and `positives` widened by their columns."""
        inputs, device = self.data.inputs, self.data.labels.device
        idx = idx.to(device)
        picks = self.picks[idx]  # [B, n]
        valid = (picks >= 0).reshape(-1)
        flat = picks.clamp(min=0).reshape(-1)
        taken = ready({k: v[flat] for k, v in inputs.items() if k in (self.candidate, f"{self.candidate}_len")},
                      self.data.kinds)
        out = dict(batch)
        for k, v in taken.items():
            out[extra_key(self.candidate) + k[len(self.candidate):]] = v.unflatten(0, tuple(picks.shape))
        return out, WithExtra(self.anchor, self.candidate, positives, self._extra_positives(idx, flat), valid)

    def _extra_positives(self, idx: torch.Tensor, flat: torch.Tensor) -> torch.Tensor:
        """[B, E]: which extra candidates (samples `flat`) are positives of each anchor (samples `idx`)."""
        fields = split_fields(self.data.labels, self.data.inputs, self.text_key)
        return positive_pairs(at_rows(fields, idx[:, None]), at_rows(fields, flat[None, :]), self.positives,
                              self.text_key)


def _rows_of(path: str | Path, keys: list[str], rows: Negatives) -> tuple[np.ndarray, np.ndarray]:
    """The split rows of the file's anchor and negative keys; a key the split lacks (or keys the split
    holds twice) is a DataError naming the file."""
    index = {k: i for i, k in enumerate(keys)}
    if len(index) != len(keys):
        raise DataError(f"{path}: the train split holds some keys twice; negatives are named by key")
    anchors = np.array([index.get(k, -1) for k in rows.anchor_key], dtype=np.int64)
    negatives = np.array([index.get(k, -1) for k in rows.negative_key], dtype=np.int64)
    lost = [k for k, i in zip([*rows.anchor_key, *rows.negative_key], [*anchors, *negatives], strict=True) if i < 0]
    if lost:
        raise DataError(f"{path}: {len(lost)} keys are not in the train split (first: {lost[0]!r}); "
                        "mine the run's own train data")
    return anchors, negatives
