"""Triplet margin loss over the joint space: an anchor of one modality is nearer to its positives of the
other modality than to its negatives by a margin, for every (anchor, positive, negative) triplet."""

from __future__ import annotations

import torch
from pydantic import Field

from jointspace.losses.base import LossContext, LossParams, PairLoss, row_positives


def _one_way(anchors: torch.Tensor, gallery: torch.Tensor, pos: torch.Tensor, margin: float,
             left_out: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over valid triplets (i, p, q), pos[i, p] and not pos[i, q] nor left_out[i, q], of
    relu(d_ip - d_iq + margin), with d the cosine distance 1 - a.g of normalised embeddings. Memory: [n, M, M]."""
    dist = 1 - anchors @ gallery.T  # [n, M]
    hinge = (dist[:, :, None] - dist[:, None, :] + margin).clamp(min=0)  # [n, p, q]
    negatives = ~pos if left_out is None else ~pos & ~left_out
    valid = pos[:, :, None] & negatives[:, None, :]
    return (hinge * valid).sum() / valid.sum().clamp(min=1)


class TripletMargin(PairLoss):
    """Triplet margin loss in both directions (a -> b and b -> a), averaged. Reads no logit scale."""

    class Params(LossParams):
        margin: float = Field(0.2, gt=0.0)  # in cosine distance (0..2)

    uses_scale = False
    leaves_out = True

    def full(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        pos = row_positives(positives, a.shape[0], b.shape[0], None, a.device)
        m, out = self.params.margin, ctx.excluded
        return 0.5 * (_one_way(a, b, pos, m, out and out.ab) + _one_way(b, a, pos.T, m, out and out.ba))

    def local(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        n, total, m = a.shape[0], ctx.b_all.shape[0], self.params.margin
        pos_ab = row_positives(positives, n, total, ctx.rows, a.device)
        pos_ba = row_positives(positives.T if positives is not None else None, n, total, ctx.rows, a.device)
        out = ctx.excluded.rows(ctx.rows) if ctx.excluded is not None else None
        return 0.5 * (_one_way(a, ctx.b_all, pos_ab, m, out and out.ab) + _one_way(b, ctx.a_all, pos_ba, m, out and out.ba))
