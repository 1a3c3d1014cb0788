"""N-modality binding: a weighted sum of one pairwise loss over pairs of modalities, gathered once."""

from __future__ import annotations

from dataclasses import replace
from itertools import combinations

import torch
from torch import nn

from jointspace.collectives import gather_with_grad
from jointspace.errors import UsageError
from jointspace.losses.base import LossContext, PairLoss
from jointspace.losses.extra import WithExtra, extra_key
from jointspace.losses.masks import Exclusions
from jointspace.losses.registry import build_pair_loss, extra_refusal


def binding_pairs(modalities: list[str], anchor: str | None = None,
                  pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Pairs to align: explicit ones, else anchor<->each other (ImageBind), else all pairs."""
    if pairs:
        bad = [m for p in pairs for m in p if m not in modalities]
        if bad:
            raise UsageError(f"loss.pairs: {bad} not among modalities {modalities}")
        return [tuple(p) for p in pairs]
    if anchor is not None:
        if anchor not in modalities:
            raise UsageError(f"loss.anchor: {anchor!r} not among modalities {modalities}")
        return [(anchor, m) for m in modalities if m != anchor]
    return list(combinations(modalities, 2))


class BindingLoss(nn.Module):
    """Weighted sum of a pairwise loss over N modalities (ImageBind-style with an anchor).

    `loss`: a registered loss name (built with its default params and `local_loss`) or a built `PairLoss`.
    Under data parallelism (`world_size` > 1) embeddings are all-gathered with gradient once, and each
    pair loss gets this rank's rows and the gathered pair in its context; where it is computed (locally or
    over the whole gathered batch) is the pair loss's `local_loss` flag. Either way `positives` is the
    global [N, N] mask (built from gathered labels), so positives across ranks count; `excluded`, per pair,
    the candidates left out of its negatives over the global batch (a guide run's), in the pair's context.
    """

    def __init__(self, pairs: list[tuple[str, str]], loss: str | PairLoss = "infonce",
                 weights: dict[str, float] | None = None, rank: int = 0, world_size: int = 1,
                 local_loss: bool = False):
        super().__init__()
        self.pairs = pairs
        self.pair_loss = loss if isinstance(loss, PairLoss) else build_pair_loss(loss, local_loss=local_loss)
        weights = weights or {}
        # a weight may name the pair "a-b" or the non-anchor modality b
        self.weights = {p: float(weights.get(f"{p[0]}-{p[1]}", weights.get(p[1], 1.0))) for p in pairs}
        self.rank, self.world_size = rank, world_size

    def forward(self, emb: dict[str, torch.Tensor], positives: torch.Tensor | WithExtra | None,
                ctx: LossContext, excluded: dict[tuple[str, str], Exclusions] | None = None,
                ) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        """`positives`: the global mask, or a `WithExtra` when the batch has extra candidates (`emb` then
        holds their embeddings under `extra_key(candidate)`): its pair is scored with them. `excluded`: per
        pair, candidates left out of the negatives (a guide run's); not with extra candidates on that pair."""
        extra, positives = (positives, positives.positives) if isinstance(positives, WithExtra) else (None, positives)
        rows, gathered = None, emb
        if self.world_size > 1:
            gathered = {m: gather_with_grad(e) for m, e in emb.items()}
            n = emb[self.pairs[0][0]].shape[0]
            rows = slice(self.rank * n, (self.rank + 1) * n)
        parts: dict[str, torch.Tensor] = {}
        total = emb[self.pairs[0][0]].new_zeros(())
        for a, b in self.pairs:
            left_out = (excluded or {}).get((a, b))
            if extra is not None and extra.applies((a, b)):
                if left_out is not None:
                    raise UsageError(f"loss.guide and data.hard_negatives do not combine (pair {a}-{b})")
                loss = self._with_extra(emb, gathered, positives, extra, replace(ctx, rows=rows))
            else:
                pair_ctx = replace(ctx, rows=rows, a_all=gathered[a], b_all=gathered[b], excluded=left_out)
                loss = self.pair_loss(emb[a], emb[b], positives, pair_ctx)
            parts[f"{a}-{b}"] = loss.detach()
            total = total + self.weights[(a, b)] * loss
        return total, parts

    def _with_extra(self, emb: dict, gathered: dict, positives: torch.Tensor | None, extra: WithExtra,
                    ctx: LossContext) -> torch.Tensor:
        """The pair loss of anchor -> candidate (the pair oriented so; a pair loss scores both directions
        alike) with the candidate's extra embeddings as more columns of the anchor's rows."""
        if not self.pair_loss.takes_extra:
            raise UsageError(extra_refusal(type(self.pair_loss).__name__))
        a, b = extra.anchor, extra.candidate
        pair_ctx = replace(ctx, a_all=gathered[a], b_all=gathered[b], extra=gathered[extra_key(b)],
                           extra_positives=extra.extra, extra_valid=extra.valid)
        return self.pair_loss(emb[a], emb[b], positives, pair_ctx)
