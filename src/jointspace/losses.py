"""Contrastive losses for joint spaces: InfoNCE/CLIP with a positive mask, SigLIP, N-modality binding.

The positive mask generalises CLIP's identity targets: `pos_mask[i, j]` is True when gallery item j
is a valid positive for anchor i (same sample, same label, or same caption). With the identity mask
the loss is exactly CLIP's symmetric cross-entropy.
"""

from __future__ import annotations

from itertools import combinations

import torch
import torch.nn.functional as F
from torch import nn


def positive_mask(batch: dict[str, torch.Tensor], mode: str, text_key: str | None = None) -> torch.Tensor | None:
    """[B, B] bool mask of positives: "instance" (None = identity), "label", or "caption" (same token ids)."""
    if mode == "instance":
        return None
    if mode == "label":
        labels = batch["label"]
        return labels[:, None] == labels[None, :]
    if mode == "caption":
        if text_key is None or text_key not in batch:
            raise ValueError("positives: caption needs a text modality in the batch")
        ids = batch[text_key]
        return (ids[:, None, :] == ids[None, :, :]).all(-1)
    raise ValueError(f"positives must be instance/label/caption, got {mode!r}")


def _multi_positive_ce(logits: torch.Tensor, pos_mask: torch.Tensor | None) -> torch.Tensor:
    """Mean over rows of -(1/|P_i|) * sum_{p in P_i} log softmax(logits_i)_p."""
    if pos_mask is None:
        return F.cross_entropy(logits, torch.arange(logits.shape[0], device=logits.device))
    logp = F.log_softmax(logits, dim=-1)
    pos = pos_mask.to(logp.dtype)
    return -((logp * pos).sum(-1) / pos.sum(-1).clamp(min=1)).mean()


def clip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor,
              pos_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Symmetric InfoNCE between normalised embeddings a [N, D] and b [M, D] (mask [N, M])."""
    logits_ab = logit_scale * a @ b.T
    mask_t = pos_mask.T if pos_mask is not None else None
    return 0.5 * (_multi_positive_ce(logits_ab, pos_mask) + _multi_positive_ce(logits_ab.T, mask_t))


def siglip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                pos_mask: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid loss (Zhai et al. 2023): -sum log sigmoid(z_ij * (t * a_i.b_j + bias)) / N."""
    logits = logit_scale * a @ b.T + logit_bias
    if pos_mask is None:
        pos_mask = torch.eye(a.shape[0], b.shape[0], dtype=torch.bool, device=a.device)
    signs = pos_mask.to(logits.dtype) * 2 - 1
    return -F.logsigmoid(signs * logits).sum() / a.shape[0]


def binding_pairs(modalities: list[str], anchor: str | None = None,
                  pairs: list[tuple[str, str]] | None = None) -> list[tuple[str, str]]:
    """Pairs to align: explicit ones, else anchor<->each other (ImageBind), else all pairs."""
    if pairs:
        bad = [m for p in pairs for m in p if m not in modalities]
        if bad:
            raise ValueError(f"loss.pairs: {bad} not among modalities {modalities}")
        return [tuple(p) for p in pairs]
    if anchor is not None:
        if anchor not in modalities:
            raise ValueError(f"loss.anchor: {anchor!r} not among modalities {modalities}")
        return [(anchor, m) for m in modalities if m != anchor]
    return list(combinations(modalities, 2))


class BindingLoss(nn.Module):
    """Weighted sum of pairwise contrastive losses over N modalities (ImageBind-style with an anchor)."""

    def __init__(self, pairs: list[tuple[str, str]], kind: str = "infonce",
                 weights: dict[str, float] | None = None):
        super().__init__()
        if kind not in ("infonce", "siglip"):
            raise ValueError(f"loss.name must be infonce or siglip, got {kind!r}")
        self.pairs = pairs
        self.kind = kind
        weights = weights or {}
        # a weight may name the pair "a-b" or the non-anchor modality b
        self.weights = {p: float(weights.get(f"{p[0]}-{p[1]}", weights.get(p[1], 1.0))) for p in pairs}

    def forward(self, emb: dict[str, torch.Tensor], logit_scale: torch.Tensor, pos_mask: torch.Tensor | None,
                logit_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        parts: dict[str, torch.Tensor] = {}
        total = emb[self.pairs[0][0]].new_zeros(())
        for a, b in self.pairs:
            if self.kind == "infonce":
                loss = clip_loss(emb[a], emb[b], logit_scale, pos_mask)
            else:
                loss = siglip_loss(emb[a], emb[b], logit_scale, logit_bias, pos_mask)
            parts[f"{a}-{b}"] = loss.detach()
            total = total + self.weights[(a, b)] * loss
        return total, parts
