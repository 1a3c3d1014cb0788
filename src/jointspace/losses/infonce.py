"""InfoNCE / CLIP with a positive mask.

The positive mask generalises CLIP's identity targets: `pos_mask[i, j]` is True when gallery item j
is a valid positive for anchor i (same sample, same label, or same caption). With the identity mask
the loss is exactly CLIP's symmetric cross-entropy. Candidates left out (`Exclusions`, a guide run's
likely false negatives) get logit -inf: they drop out of every softmax, as in GISTEmbedLoss.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jointspace.losses.base import LossContext, PairLoss, row_positives
from jointspace.losses.extra import scaled_with_extra
from jointspace.losses.masks import Exclusions


def _multi_positive_ce(logits: torch.Tensor, pos_mask: torch.Tensor | None, offset: int = 0,
                       left_out: torch.Tensor | None = None) -> torch.Tensor:
    """Mean over rows of -(1/|P_i|) * sum_{p in P_i} log softmax(logits_i)_p, the entries `left_out`
    removed from the softmax (never a positive: the caller's mask excludes them); `pos_mask` None: the
    positive of row i is column i + offset."""
    if left_out is not None:
        logits = logits.masked_fill(left_out, float("-inf"))
    if pos_mask is None:
        return F.cross_entropy(logits, torch.arange(offset, offset + logits.shape[0], device=logits.device))
    logp = F.log_softmax(logits, dim=-1).masked_fill(~pos_mask, 0.0)  # a left-out -inf x 0 would be nan
    return -(logp.sum(-1) / pos_mask.sum(-1).clamp(min=1)).mean()


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
              pos_mask: torch.Tensor | None = None, rows: slice | None = None,
              a_all: torch.Tensor | None = None, b_all: torch.Tensor | None = None,
              excluded: Exclusions | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between normalised embeddings a [N, D] and b [M, D] (mask [N, M]), without the
    candidates `excluded` leaves out.

    Local loss (data parallel): a, b are this rank's rows `rows` of the gathered batches a_all, b_all;
    anchors are the local rows, candidates the whole gathered batch, `pos_mask` and `excluded` global.
    """
    left = excluded.rows(rows) if excluded is not None else None
    left_ab, left_ba = (left.ab, left.ba) if left is not None else (None, None)
    if a_all is None or b_all is None or rows is None:
        logits_ab = logit_scale * a @ b.T
        mask_t = pos_mask.T if pos_mask is not None else None
        return 0.5 * (_multi_positive_ce(logits_ab, pos_mask, 0, left_ab)
                      + _multi_positive_ce(logits_ab.T, mask_t, 0, left_ba))
    logits_ab = logit_scale * a @ b_all.T  # [n, N]
    logits_ba = logit_scale * b @ a_all.T
    mask_ab, mask_ba = (None, None) if pos_mask is None else (pos_mask[rows], pos_mask.T[rows])
    return 0.5 * (_multi_positive_ce(logits_ab, mask_ab, rows.start, left_ab)
                  + _multi_positive_ce(logits_ba, mask_ba, rows.start, left_ba))


def clip_loss_extra(a: torch.Tensor, b: torch.Tensor, ctx: LossContext, pos_mask: torch.Tensor | None,
                    local: bool = False) -> torch.Tensor:
    """`clip_loss` whose a -> b rows also score the extra candidates `ctx.extra` (NegCLIP: each row's
    log-softmax runs over the batch's candidates and the extra ones; missing extra candidates are left out);
    b -> a is CLIP's. `local`: a, b are this rank's rows `ctx.rows` of the gathered `ctx.a_all`, `ctx.b_all`."""
    rows = ctx.rows if local else None
    a_gallery, b_gallery = (ctx.a_all, ctx.b_all) if local else (a, b)
    pos_ba = row_positives(pos_mask.T if pos_mask is not None else None, a.shape[0], a_gallery.shape[0], rows,
                           a.device)
    logits_ab, pos_ext, keep = scaled_with_extra(a, b_gallery, pos_mask, rows, ctx)
    logits_ab = logits_ab.masked_fill(~keep, float("-inf"))
    logits_ba = ctx.logit_scale * b @ a_gallery.T
    return 0.5 * (_multi_positive_ce(logits_ab, pos_ext) + _multi_positive_ce(logits_ba, pos_ba))


class InfoNCE(PairLoss):
    """Symmetric InfoNCE (CLIP) over a positive mask, at its learned logit scale; extra candidates of b
    (mined hard negatives) widen the a -> b rows."""

    takes_extra = True
    leaves_out = True

    def full(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        if ctx.extra is not None:
            return clip_loss_extra(a, b, ctx, positives)
        return clip_loss(a, b, ctx.logit_scale, positives, excluded=ctx.excluded)

    def local(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        if ctx.extra is not None:
            return clip_loss_extra(a, b, ctx, positives, local=True)
        return clip_loss(a, b, ctx.logit_scale, positives, ctx.rows, ctx.a_all, ctx.b_all, ctx.excluded)
