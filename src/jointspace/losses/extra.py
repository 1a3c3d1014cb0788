"""Extra candidates per anchor (mined hard negatives, NegCLIP-style): the anchors of one modality score,
besides the batch's candidates, extra candidates of the other modality; the candidate -> anchor
direction is unchanged. How they travel: the batch holds them as `extra_key(candidate)` inputs
[B, n, ...] (n per anchor, so that slicing a batch by anchor rows slices them along), the model embeds
them under the same key ([B * n, D]), and the positives become a `WithExtra`."""

from __future__ import annotations

from dataclasses import dataclass

import torch

from jointspace.losses.base import LossContext, row_positives

EXTRA_SUFFIX = "+extra"


def extra_key(modality: str) -> str:
    """The batch / embedding key of a modality's extra candidates."""
    return f"{modality}{EXTRA_SUFFIX}"


def flat_extra(batch: dict[str, torch.Tensor], modality: str) -> dict[str, torch.Tensor]:
    """The extra candidates of `modality` as a batch of that modality: [B, n, ...] -> [B * n, ...] (with
    their lengths where the kind has them)."""
    key = extra_key(modality)
    out = {modality: batch[key].flatten(0, 1)}
    if f"{key}_len" in batch:
        out[f"{modality}_len"] = batch[f"{key}_len"].flatten(0, 1)
    return out


@dataclass(frozen=True)
class WithExtra:
    """The positives of a batch whose `anchor` embeddings also score extra candidates of `candidate`:
    `positives` the in-batch [N, N] mask (None: the identity), `extra` [N, E] which extra candidates are
    positives of each anchor (under the run's positive rule), `valid` [E] which extra candidates exist
    (an anchor with fewer mined negatives than asked leaves slots empty: out of every row)."""

    anchor: str
    candidate: str
    positives: torch.Tensor | None
    extra: torch.Tensor
    valid: torch.Tensor

    def applies(self, pair: tuple[str, str]) -> bool:
        """Whether the pair is this anchor and candidate (in either order)."""
        return set(pair) == {self.anchor, self.candidate}


def extended_positives(in_batch: torch.Tensor, extra: torch.Tensor, valid: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(positives [n, M + E], columns that exist [M + E]) of anchors against the batch's M candidates then
    the E extra ones (`in_batch` [n, M], `extra` [n, E], `valid` [E])."""
    keep = torch.cat([torch.ones(in_batch.shape[1], dtype=torch.bool, device=valid.device), valid])
    return torch.cat([in_batch, extra & valid], dim=1), keep


def scaled_with_extra(a: torch.Tensor, b_gallery: torch.Tensor, pos_mask: torch.Tensor | None, rows: slice | None,
                      ctx: LossContext) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Anchors `a` (the rows `rows` of the global batch; None: all) against the gallery `b_gallery` then the
    extra candidates `ctx.extra`: (logits at the logit scale [n, M + E], positives over them, columns that
    exist [M + E])."""
    pos = row_positives(pos_mask, a.shape[0], b_gallery.shape[0], rows, a.device)
    extra_pos = ctx.extra_positives[rows] if rows is not None else ctx.extra_positives
    pos, keep = extended_positives(pos, extra_pos, ctx.extra_valid)
    return ctx.logit_scale * a @ torch.cat([b_gallery, ctx.extra]).T, pos, keep
