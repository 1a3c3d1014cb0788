"""Distillation from a frozen teacher space, open_clip's `DistillClipLoss` form: the cross-entropy of the
teacher's softmax over a batch's similarities against the student's log-softmax, each direction of a
modality pair (a -> b, b -> a) averaged over its anchors, the two directions averaged."""

from __future__ import annotations

import torch


def distill_loss(student: tuple[torch.Tensor, torch.Tensor], student_scale: torch.Tensor,
                 teacher: tuple[torch.Tensor, torch.Tensor], teacher_scale: torch.Tensor | float,
                 rows: slice | None = None) -> torch.Tensor:
    """Both spaces' normalised embeddings (a [N, D], b [N, D]; the teacher's D may differ) of the same
    batch, each scored at its own scale; the anchors `rows` (None: all; data parallel: this rank's) against
    every candidate, as open_clip's local loss. Each direction is `DistillClipLoss.dist_loss`."""
    from open_clip.loss import DistillClipLoss

    dist_loss = DistillClipLoss().dist_loss  # -(softmax(teacher) * log_softmax(student)).sum(1).mean(0)
    r = rows if rows is not None else slice(None)
    (sa, sb), (ta, tb) = student, teacher
    per_dir = [dist_loss(teacher_scale * t_anchor[r] @ t_cand.T, student_scale * s_anchor[r] @ s_cand.T)
               for (s_anchor, s_cand), (t_anchor, t_cand) in (((sa, sb), (ta, tb)), ((sb, sa), (tb, ta)))]
    return (per_dir[0] + per_dir[1]) / 2
