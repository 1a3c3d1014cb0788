"""pytorch-metric-learning losses through the same seam as every loss: a PML loss class by name across
towers (PML's `ref_emb`: anchors of one modality, references of the other), in both directions."""

from __future__ import annotations

from typing import Any

import torch
from pydantic import Field, field_validator

from jointspace.errors import UsageError
from jointspace.losses.base import LossContext, LossParams, PairLoss
from jointspace.losses.metric import _pml_build, _pml_class


class PMLParams(LossParams):
    loss: str  # a class of pytorch_metric_learning.losses, e.g. TripletMarginLoss, MultiSimilarityLoss
    params: dict[str, Any] = Field(default_factory=dict)  # its constructor arguments

    @field_validator("loss")
    @classmethod
    def _a_pml_loss(cls, v: str) -> str:
        from pytorch_metric_learning import losses

        if v[:1].isupper() and isinstance(getattr(losses, v, None), type):
            return v
        raise UsageError(f"no class {v!r} in pytorch_metric_learning.losses")


def mask_labels(positives: torch.Tensor | None, n: int, device: torch.device) -> torch.Tensor:
    """Class ids of a batch whose positives are an equivalence (same sample, label or caption): the index
    of each row's first positive; the identity (None) gives every row its own id."""
    if positives is None:
        return torch.arange(n, device=device)
    return positives.to(torch.uint8).argmax(dim=1)


class PMLLoss(PairLoss):
    """A PML loss of a -> b (labels from the positive mask, b as PML's `ref_emb`) and b -> a, averaged.
    Losses with trainable parameters of their own (ArcFace, ProxyAnchor...) belong to the metric task."""

    Params = PMLParams
    uses_scale = False

    def __init__(self, params: PMLParams, local_loss: bool = False):
        super().__init__(params, local_loss)
        from pytorch_metric_learning import losses

        self.inner = _pml_build(_pml_class(losses, params.loss, "loss.params.loss"), params.params, "loss.params")
        if any(p.requires_grad for p in self.inner.parameters()):
            raise UsageError(f"loss.params.loss: {params.loss} has trainable parameters; use the metric task")

    def _both_ways(self, a, b, a_ref, b_ref, labels, ref_labels) -> torch.Tensor:
        return 0.5 * (self.inner(a, labels, ref_emb=b_ref, ref_labels=ref_labels)
                      + self.inner(b, labels, ref_emb=a_ref, ref_labels=ref_labels))

    def full(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        labels = mask_labels(positives, a.shape[0], a.device)
        return self._both_ways(a, b, a, b, labels, labels)

    def local(self, a, b, positives, ctx: LossContext) -> torch.Tensor:
        labels = mask_labels(positives, ctx.a_all.shape[0], a.device)
        return self._both_ways(a, b, ctx.a_all, ctx.b_all, labels[ctx.rows], labels)
