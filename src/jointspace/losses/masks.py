"""Positive masks: which gallery items count as positives of an anchor; and exclusions: candidates that
count as neither positives nor negatives (a guide run's likely false negatives, GISTEmbed's rule)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch

from jointspace.errors import UsageError

MODES = ("instance", "label", "caption")
SAMPLE = "sample"  # a batch field of sample ids (rows of the split): the same id is the same sample


def positive_pairs(anchor: dict[str, torch.Tensor], candidate: dict[str, torch.Tensor], mode: str,
                   text_key: str | None = None) -> torch.Tensor:
    """Whether each candidate is a positive of its anchor, element by element over the broadcast leading
    shape of the two (e.g. anchors [A, 1] against candidates [A, k] or [1, C]): the same sample (field
    `sample`), and under "label" the same label, under "caption" the same caption token ids."""
    if mode not in MODES:
        raise UsageError(f"positives must be instance/label/caption, got {mode!r}")
    same = anchor[SAMPLE] == candidate[SAMPLE]
    if mode == "label":
        same = same | (anchor["label"] == candidate["label"])
    elif mode == "caption":
        if text_key is None or text_key not in anchor or text_key not in candidate:
            raise UsageError("positives: caption needs a text modality in the batch")
        same = same | (anchor[text_key] == candidate[text_key]).all(-1)
    return same


def split_fields(labels: torch.Tensor, inputs: dict[str, torch.Tensor], text_key: str | None) -> dict[str, torch.Tensor]:
    """What the positive rule reads of a split's samples: labels, and the captions' token ids when it has them."""
    fields = {"label": labels}
    if text_key is not None and text_key in inputs:
        fields[text_key] = inputs[text_key]
    return fields


def at_rows(fields: dict[str, torch.Tensor], rows: torch.Tensor) -> dict[str, torch.Tensor]:
    """`split_fields` of the samples `rows` (any shape of split rows), with their ids under SAMPLE: one side
    of `positive_pairs`."""
    return {SAMPLE: rows, **{f: t[rows] for f, t in fields.items()}}


def positive_mask(batch: dict[str, torch.Tensor], mode: str, text_key: str | None = None) -> torch.Tensor | None:
    """[B, B] bool mask of positives: "instance" (None = identity), "label", or "caption" (same token ids)."""
    if mode not in MODES:
        raise UsageError(f"positives must be instance/label/caption, got {mode!r}")
    if mode == "instance":
        return None
    if mode == "caption" and (text_key is None or text_key not in batch):
        raise UsageError("positives: caption needs a text modality in the batch")
    fields = [f for f in ("label", text_key) if f is not None and f in batch]
    n = len(batch[fields[0]])
    ids = torch.arange(n, device=batch[fields[0]].device)
    rows = {SAMPLE: ids[:, None], **{f: batch[f][:, None] for f in fields}}
    cols = {SAMPLE: ids[None, :], **{f: batch[f][None, :] for f in fields}}
    return positive_pairs(rows, cols, mode, text_key)


@dataclass(frozen=True)
class Exclusions:
    """Candidates left out of an anchor's negatives (and not made positives), over the global batch of a
    modality pair (a, b): `ab[i, j]` leaves b_j out for anchor a_i, `ba[j, i]` leaves a_i out for anchor b_j.
    A loss reads them through `LossContext.excluded`."""

    ab: torch.Tensor  # [N, M] bool
    ba: torch.Tensor  # [M, N] bool

    def rows(self, rows: slice | None) -> Exclusions:
        """The anchors `rows` of both directions (data parallel: this rank's), against every candidate."""
        return self if rows is None else Exclusions(self.ab[rows], self.ba[rows])


def _one_way(sim: torch.Tensor, positive_sim: torch.Tensor, positives: torch.Tensor, margin: float,
             strategy: str) -> torch.Tensor:
    """[n, m]: candidates scored above the anchor's positive's score less the margin (absolute: pos -
    margin; relative: pos - |pos| x margin), positives never."""
    threshold = positive_sim - margin if strategy == "absolute" else positive_sim - positive_sim.abs() * margin
    return (sim > threshold[:, None]) & ~positives


def guide_exclusions(sim: torch.Tensor, positives: torch.Tensor | None, margin: float = 0.0,
                     strategy: Literal["absolute", "relative"] = "absolute") -> Exclusions:
    """GISTEmbed's rule (sentence-transformers' GISTEmbedLoss, its `margin_strategy`) in both directions:
    from a guide's similarities `sim` [N, N] of a_i and b_j, whose diagonal scores each anchor's own pair,
    leave out of anchor a_i's negatives every b_j the guide scores above sim[i, i] less the margin, and
    of b_j's negatives every a_i scored above sim[j, j] less the margin. `positives` (None: the identity)
    stay positives."""
    if strategy not in ("absolute", "relative"):
        raise UsageError(f"loss.guide_margin_strategy must be absolute or relative, got {strategy!r}")
    n = sim.shape[0]
    pos = positives if positives is not None else torch.eye(n, dtype=torch.bool, device=sim.device)
    diag = sim.diagonal()
    return Exclusions(_one_way(sim, diag, pos, margin, strategy), _one_way(sim.T, diag, pos.T, margin, strategy))
