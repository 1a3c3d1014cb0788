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

from jointspace.engine.distributed import gather_with_grad


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


def siglip_loss(a: torch.Tensor, b: torch.Tensor, logit_scale: torch.Tensor, logit_bias: torch.Tensor,
                pos_mask: torch.Tensor | None = None, rows: slice | None = None,
                b_all: torch.Tensor | None = None) -> torch.Tensor:
    """Sigmoid loss (Zhai et al. 2023): -sum log sigmoid(z_ij * (t * a_i.b_j + bias)) / N.

    Data parallel: a holds this rank's `rows`, b_all the gathered batch and `pos_mask` the global mask.
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
    """Weighted sum of pairwise contrastive losses over N modalities (ImageBind-style with an anchor).

    Under data parallelism (`world_size` > 1) embeddings are all-gathered with gradient; `local_loss`
    scores only this rank's anchors against the gathered batch (open_clip's --local-loss), otherwise
    every rank computes the loss of the whole global batch. Either way `pos_mask` is the global
    [N, N] mask (built from gathered labels), so positives across ranks count.
    """

    def __init__(self, pairs: list[tuple[str, str]], kind: str = "infonce",
                 weights: dict[str, float] | None = None, rank: int = 0, world_size: int = 1,
                 local_loss: bool = False):
        super().__init__()
        if kind not in ("infonce", "siglip"):
            raise ValueError(f"loss.name must be infonce or siglip, got {kind!r}")
        self.pairs = pairs
        self.kind = kind
        weights = weights or {}
        # a weight may name the pair "a-b" or the non-anchor modality b
        self.weights = {p: float(weights.get(f"{p[0]}-{p[1]}", weights.get(p[1], 1.0))) for p in pairs}
        self.rank, self.world_size, self.local_loss = rank, world_size, local_loss

    def forward(self, emb: dict[str, torch.Tensor], logit_scale: torch.Tensor, pos_mask: torch.Tensor | None,
                logit_bias: torch.Tensor | None = None) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
        rows, gathered = None, emb
        if self.world_size > 1:

            gathered = {m: gather_with_grad(e) for m, e in emb.items()}
            n = next(iter(emb.values())).shape[0]
            rows = slice(self.rank * n, (self.rank + 1) * n)
        local = rows is not None and (self.local_loss or self.kind == "siglip")
        parts: dict[str, torch.Tensor] = {}
        total = emb[self.pairs[0][0]].new_zeros(())
        for a, b in self.pairs:
            if self.kind == "infonce" and local:
                loss = clip_loss(emb[a], emb[b], logit_scale, pos_mask, rows, gathered[a], gathered[b])
            elif self.kind == "infonce":
                loss = clip_loss(gathered[a], gathered[b], logit_scale, pos_mask)
            elif local:
                loss = siglip_loss(emb[a], emb[b], logit_scale, logit_bias, pos_mask, rows, gathered[b])
            else:
                loss = siglip_loss(emb[a], emb[b], logit_scale, logit_bias, pos_mask)
            parts[f"{a}-{b}"] = loss.detach()
            total = total + self.weights[(a, b)] * loss
        return total, parts


# ------------------------------------------------------------------ metric learning (pytorch-metric-learning)
def _pml_class(module, name: str, field: str):
    """A class of a pytorch-metric-learning module by name; unknown names list the choices."""
    known = sorted(n for n in dir(module) if n[:1].isupper() and isinstance(getattr(module, n), type))
    if name not in known:
        raise ValueError(f"{field}: unknown {module.__name__} class {name!r}; choose from {', '.join(known)}")
    return getattr(module, name)


def _pml_build(cls, params: dict, field: str, **extra):
    """Instantiate a PML class; `extra` only fills constructor arguments the class takes and params lack."""
    import inspect

    kwargs = dict(params)
    accepted = inspect.signature(cls.__init__).parameters
    for key, value in extra.items():
        if key in accepted and key not in kwargs and value is not None:
            kwargs[key] = value
    try:
        return cls(**kwargs)
    except TypeError as err:
        raise ValueError(f"{field}: {cls.__name__}({', '.join(kwargs)}): {err}") from None


def build_metric_loss(cfg, embedding_size: int, num_classes: int) -> tuple[nn.Module, nn.Module | None]:
    """(loss, miner) from a MetricConfig: PML classes by name, sharing the distance and reducer if given.

    Classification-style losses (ArcFaceLoss, CosFaceLoss, ProxyAnchorLoss, ...) get `num_classes` and
    `embedding_size` filled in; their own parameters (class weights) must be given to the optimizer.
    """
    from pytorch_metric_learning import distances, losses, miners, reducers

    distance = None
    if cfg.distance is not None:
        distance = _pml_build(_pml_class(distances, cfg.distance.name, "metric.distance.name"),
                              cfg.distance.params, "metric.distance")
    reducer = None
    if cfg.reducer is not None:
        reducer = _pml_build(_pml_class(reducers, cfg.reducer.name, "metric.reducer.name"),
                             cfg.reducer.params, "metric.reducer")
    loss = _pml_build(_pml_class(losses, cfg.loss.name, "metric.loss.name"), cfg.loss.params, "metric.loss",
                      num_classes=num_classes, embedding_size=embedding_size, distance=distance, reducer=reducer)
    miner = None
    if cfg.miner is not None:
        miner = _pml_build(_pml_class(miners, cfg.miner.name, "metric.miner.name"), cfg.miner.params,
                           "metric.miner", distance=distance)
    return loss, miner
