"""SigLIP: the pairwise sigmoid loss (Zhai et al. 2023)."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jointspace.losses.base import LossContext, PairLoss
from jointspace.losses.extra import scaled_with_extra
from jointspace.losses.masks import Exclusions


def siglip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                pos_mask: torch.Tensor | None = None, rows: slice | None = None,
                b_all: torch.Tensor | None = None, excluded: Exclusions | None = None) -> torch.Tensor:
    """Sigmoid loss (Zhai et al. 2023): -sum log sigmoid(z_ij * (t * a_i.b_j + bias)) / N, without the
    pairs (i, j) `excluded` leaves out in either direction (b_j for anchor a_i, or a_i for anchor b_j).

    Data parallel: a holds this rank's `rows`, b_all the gathered batch; `pos_mask`, `excluded` global.
    """
    gallery = b if b_all is None else b_all
    logits = logit_scale * a @ gallery.T + logit_bias
    if pos_mask is None:
        offset = rows.start if rows is not None else 0
        pos = torch.zeros_like(logits, dtype=torch.bool)
        diag = torch.arange(a.shape[0], device=logits.device)
        pos[diag, diag + offset] = True
    else:
        pos = pos_mask[rows] if rows is not None else pos_mask
    signs = pos.to(logits.dtype) * 2 - 1
    terms = F.logsigmoid(signs * logits)
    if excluded is not None:  # the pair (i, j) is one term: left out when either direction leaves it out
        cols = rows if rows is not None else slice(None)
        terms = terms.masked_fill(excluded.rows(rows).ab | excluded.ba[:, cols].T, 0.0)
    return -terms.sum() / a.shape[0]


def siglip_loss_extra(a: torch.Tensor, b_gallery: torch.Tensor, ctx: LossContext, pos_mask: torch.Tensor | None,
                      rows: slice | None = None) -> torch.Tensor:
    """`siglip_loss` with the extra candidates `ctx.extra` as more pairs of each anchor (positive or
    negative by `ctx.extra_positives`; missing ones left out of the sum)."""
    logits, pos, keep = scaled_with_extra(a, b_gallery, pos_mask, rows, ctx)
    logits = logits + ctx.logit_bias
    signs = pos.to(logits.dtype) * 2 - 1
    return -(F.logsigmoid(signs * logits) * keep.to(logits.dtype)).sum() / a.shape[0]


class SigLIP(PairLoss):
    """Sigmoid loss at its learned logit scale and bias. A sum over pairs: under data parallelism each
    rank scores its own anchors against the gathered batch (always local). Extra candidates of b (mined
    hard negatives) are more pairs of each anchor."""

    always_local = True
    uses_bias = True
    init_bias = -10.0  # the SigLIP paper's
    takes_extra = True
    leaves_out = True

    def full(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        if ctx.extra is not None:
            return siglip_loss_extra(a, b, ctx, positives)
        return siglip_loss(a, b, ctx.logit_scale, ctx.logit_bias, positives, excluded=ctx.excluded)

    def local(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        if ctx.extra is not None:
            return siglip_loss_extra(a, ctx.b_all, ctx, positives, ctx.rows)
        return siglip_loss(a, b, ctx.logit_scale, ctx.logit_bias, positives, ctx.rows, ctx.b_all, ctx.excluded)
