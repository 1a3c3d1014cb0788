"""InfoNCE / CLIP with a positive mask.

The positive mask generalises CLIP's identity targets: `pos_mask[i, j]` is True when gallery item j
is a valid positive for anchor i (same sample, same label, or same caption). With the identity mask
the loss is exactly CLIP's symmetric cross-entropy.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from jointspace.losses.base import LossContext, PairLoss


def _multi_positive_ce(logits: torch.Tensor, pos_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over rows of -(1/|P_i|) * sum_{p in P_i} log softmax(logits_i)_p."""
    if pos_mask is None:
        return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
    logp = F.log_softmax(logits, dim=-1)
    pos = pos_mask.to(logp.dtype)
    return -((logp * pos).sum(-1) / pos.sum(-1).clamp(min=1)).mean()


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
              pos_mask: torch.Tensor | None = None, rows: slice | None = None,
              a_all: torch.Tensor | None = None, b_all: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between normalised embeddings a [N, D] and b [M, D] (mask [N, M]).

    Local loss (data parallel): a, b are this rank's rows `rows` of the gathered batches a_all, b_all;
    anchors are the local rows, candidates the whole gathered batch, `pos_mask` the global [N, N] mask.
    """
    if a_all is None or b_all is None or rows is None:
        logits_ab = logit_scale * a @ b.T
        mask_t = pos_mask.T if pos_mask is not None else None
        return 0.5 * (_multi_positive_ce(logits_ab, pos_mask) + _multi_positive_ce(logits_ab.T, mask_t))
    logits_ab = logit_scale * a @ b_all.T  # [n, N]
    logits_ba = logit_scale * b @ a_all.T
    if pos_mask is None:
        targets = torch.arange(rows.start, rows.stop, device=a.device)
        return 0.5 * (F.cross_entropy(logits_ab, targets) + F.cross_entropy(logits_ba, targets))
    return 0.5 * (_multi_positive_ce(logits_ab, pos_mask[rows]) + _multi_positive_ce(logits_ba, pos_mask.T[rows]))


class InfoNCE(PairLoss):
    """Symmetric InfoNCE (CLIP) over a positive mask, at the model's logit scale."""

    def full(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        return clip_loss(a, b, ctx.logit_scale, positives)

    def local(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        return clip_loss(a, b, ctx.logit_scale, positives, ctx.rows, ctx.a_all, ctx.b_all)
