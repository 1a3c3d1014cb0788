"""`jointspace mine RUN DATA`: hard negatives for each anchor of a split, ranked by the run's own joint space.

The window follows sentence-transformers' `util.mine_hard_negatives` (its "top" sampling): for an anchor,
the candidates of the other modality are ranked by cosine through a FAISS index (`neighbours.knn`, chunk
by chunk: never an N x N matrix). Never negatives: the anchor's own sample and every candidate the run's
positive rule (`loss.positives`: the same label, or the same caption) makes its positive. Of the rest, in
rank order, only the first `range_max` are considered; of those, a candidate scoring above `max_score`,
above the positive's score minus `margin`, or above positive - |positive| x `relative_margin` is
dropped (the positive: the anchor's own pair); of the remaining ones the first `range_min` are skipped
and the next `num_negatives` kept. A negative's rank is its place among all candidates (0: the most
similar, positives included)."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from jointspace.audit.neighbours import knn, make_index
from jointspace.data.hard_negatives import Negatives, write_negatives
from jointspace.data.shards import DataError
from jointspace.data.sources import shards_arg
from jointspace.errors import UsageError, require
from jointspace.evaluate.embed import embed_split
from jointspace.kinds import with_role
from jointspace.losses.binding import binding_pairs
from jointspace.losses.masks import at_rows, positive_pairs, split_fields
from jointspace.runs import load_run, load_run_split, resolve_device

CHUNK = 4096  # anchors per search


@dataclass(frozen=True)
class Window:
    """Which ranked candidates become negatives (sentence-transformers' names and defaults)."""

    range_min: int = 0
    range_max: int | None = None  # default: range_min + num_negatives (x 10 with a score filter)
    max_score: float | None = None
    margin: float | None = None  # absolute: negative <= positive - margin
    relative_margin: float | None = None  # negative <= positive - |positive| x relative_margin
    num_negatives: int = 3

    def __post_init__(self) -> None:
        if self.num_negatives < 1:
            raise UsageError(f"--num-negatives must be at least 1, got {self.num_negatives}")
        if self.range_min < 0:
            raise UsageError(f"--range-min must be non-negative, got {self.range_min}")
        if self.top - self.range_min < self.num_negatives:
            raise UsageError(f"--range-max {self.top} leaves {self.top - self.range_min} candidates after "
                             f"--range-min {self.range_min}, fewer than --num-negatives {self.num_negatives}")

    @property
    def filtered(self) -> bool:
        return any(v is not None for v in (self.max_score, self.margin, self.relative_margin))

    @property
    def top(self) -> int:
        """range_max, or its default as sentence-transformers derives it."""
        if self.range_max is not None:
            return self.range_max
        return self.range_min + self.num_negatives * (10 if self.filtered else 1)

    def keeps(self, scores: np.ndarray, positive: np.ndarray) -> np.ndarray:
        """Which candidate scores [A, k] pass the score filters, against each anchor's positive score [A]."""
        ok = np.ones(scores.shape, dtype=bool)
        if self.max_score is not None:
            ok &= scores <= self.max_score
        if self.margin is not None:
            ok &= scores <= positive[:, None] - self.margin
        if self.relative_margin is not None:
            ok &= scores <= (positive - np.abs(positive) * self.relative_margin)[:, None]
        return ok


def choose(sims: np.ndarray, rows: np.ndarray, positive: np.ndarray, is_positive: np.ndarray,
           window: Window) -> np.ndarray:
    """[A, k] which of each anchor's ranked candidates (descending `sims`, `rows` -1 where none) are its
    negatives; `is_positive` [A, k] the rule's positives (the anchor's own sample included)."""
    others = (rows >= 0) & ~is_positive
    considered = others & (np.cumsum(others, axis=1) <= window.top)
    passing = considered & window.keeps(sims, positive)
    place = np.cumsum(passing, axis=1) - 1
    return passing & (place >= window.range_min) & (place < window.range_min + window.num_negatives)


def search(anchors: np.ndarray, candidates: np.ndarray, rule, window: Window) -> tuple[np.ndarray, ...]:
    """For every anchor row: (anchor rows, negative rows, ranks, scores) of its chosen negatives, by
    anchor then rank. `rule(anchor_rows [A], candidate_rows [A, k])` -> [A, k] positives. Each chunk of
    anchors is searched deep enough that `window.top` non-positive candidates are seen (doubling k)."""
    index = make_index(candidates)
    positive = np.einsum("nd,nd->n", anchors, candidates)  # each anchor's own pair
    out: list[tuple[np.ndarray, ...]] = []
    for start in range(0, len(anchors), CHUNK):
        mine = np.arange(start, min(start + CHUNK, len(anchors)))
        k = min(len(candidates), window.top + 1)
        while True:
            sims, rows = knn(candidates, k, index, queries=anchors[mine])
            is_pos = rule(mine, rows)
            enough = ((rows >= 0) & ~is_pos).sum(axis=1) >= window.top
            if enough.all() or k >= len(candidates):
                break
            k = min(len(candidates), 2 * k)
        chosen = choose(sims, rows, positive[mine], is_pos, window)
        a, col = np.nonzero(chosen)
        out.append((mine[a], rows[a, col], col, sims[a, col]))
    return tuple(np.concatenate([o[i] for o in out]) for i in range(4))


def positive_rule(data, mode: str, text_key: str | None, candidate_modality: str | None = None):
    """The run's positive rule (`losses.masks.positive_pairs`) between rows of the split; and, as
    sentence-transformers drops repeated texts from the corpus before it mines, a candidate whose
    `candidate_modality` input equals the anchor's own (a copy of its caption, a duplicate image) is its
    positive too, never its negative."""
    fields = split_fields(data.labels, data.inputs, text_key)
    own = data.inputs.get(candidate_modality) if candidate_modality is not None else None
    if own is not None:  # one id per distinct input: equal inputs, equal ids
        own = torch.unique(own.reshape(len(own), -1), dim=0, return_inverse=True)[1]

    def rule(anchor_rows: np.ndarray, candidate_rows: np.ndarray) -> np.ndarray:
        a = torch.from_numpy(anchor_rows)[:, None]
        c = torch.from_numpy(candidate_rows).clamp(min=0)
        same = positive_pairs(at_rows(fields, a), at_rows(fields, c), mode, text_key)
        if own is not None:
            same = same | (own[c] == own[a])
        return same.numpy()

    return rule


def mine_negatives(run_dir: str | Path, data: str | Path, out: str | Path, split: str = "train",
                   anchor: str | None = None, candidate: str | None = None, window: Window = Window(),
                   device: str = "auto", overwrite: bool = False) -> dict:
    """Mine `split` of `data` through the run's joint space into the parquet file `out`; returns counts."""
    require("parquet", "pyarrow.parquet", "jointspace mine")
    out = Path(out)
    if out.exists() and (not overwrite or not out.is_file()):
        raise UsageError(f"{out}: exists; pass --overwrite to replace it" if out.is_file() else
                         f"{out}: exists and is not a file; write the negatives to a new file")
    cfg, model, info = load_run(run_dir)
    source = shards_arg(data, cfg.data)
    kinds = {m: k for m, k in info.kinds.items() if m in source.info["modalities"] and m in model.towers}
    anchor, candidate = _pair(cfg, list(kinds), anchor, candidate)
    text_key = with_role(kinds, "captions")
    wanted = [m for m in kinds if m in (anchor, candidate, text_key)]
    split_data = load_run_split(cfg, info, source, split, wanted)
    dev = resolve_device(device)
    emb = embed_split(model.to(dev), split_data, device=dev)
    rule = positive_rule(split_data, cfg.loss.positives, text_key, candidate)
    a_rows, n_rows, ranks, scores = search(emb[anchor].numpy().astype(np.float32),
                                           emb[candidate].numpy().astype(np.float32), rule, window)
    own = np.einsum("nd,nd->n", emb[anchor].numpy(), emb[candidate].numpy())
    keys = split_data.keys
    write_negatives(out, Negatives([keys[i] for i in a_rows], [keys[i] for i in n_rows], ranks, scores,
                                   own[a_rows], anchor, candidate))
    n_anchors = len(split_data)
    return {"anchors": n_anchors, "negatives": len(a_rows), "without": n_anchors - len(np.unique(a_rows)),
            "anchor": anchor, "candidate": candidate, "split": split}


def _pair(cfg, modalities: list[str], anchor: str | None, candidate: str | None) -> tuple[str, str]:
    """The anchor and candidate modalities: as given, else from the run's first trained pair (holding the
    one given)."""
    for flag, m in (("--anchor", anchor), ("--candidate", candidate)):
        if m is not None and m not in modalities:
            raise UsageError(f"{flag} {m!r}: not a modality of both the run and the data ({', '.join(modalities)})")
    if anchor is not None and anchor == candidate:
        raise UsageError(f"--anchor and --candidate are both {anchor!r}; name two modalities")
    if anchor is not None and candidate is not None:
        return anchor, candidate
    if len(modalities) < 2:
        raise DataError(f"the data holds fewer than two of the run's modalities ({', '.join(modalities)})")
    pairs = binding_pairs(modalities, cfg.loss.anchor if cfg.loss.anchor in modalities else None,
                          [p for p in cfg.loss.pairs or [] if set(p) <= set(modalities)] or None)
    given = anchor or candidate
    pair = next((p for p in pairs if given is None or given in p), None)
    if pair is None:
        pair = (given, next(m for m in modalities if m != given))
    if anchor is None and candidate is None:
        return pair[0], pair[1]
    other = pair[1] if pair[0] == given else pair[0]
    return (anchor, other) if anchor is not None else (other, candidate)
