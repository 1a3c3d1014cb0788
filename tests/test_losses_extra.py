"""Extra candidates per anchor (mined hard negatives) in the pair losses, against plain loops: the anchor's
log-softmax runs over the batch's candidates and its extra ones (NegCLIP); candidate -> anchor is CLIP's."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from jointspace.errors import UsageError
from jointspace.losses import BindingLoss, LossContext, build_pair_loss
from jointspace.losses.extra import WithExtra, extra_key


def _emb(n, d=8, seed=0):
    g = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(n, d, generator=g, dtype=torch.float64), dim=-1)


def _ce_rows(rows: list[list[float]], positives: list[list[bool]]) -> float:
    """Mean over rows of the mean over positives of -log softmax (entries None are left out)."""
    total = 0.0
    for row, pos in zip(rows, positives, strict=True):
        lse = math.log(sum(math.exp(x) for x in row if x is not None))
        hits = [j for j, p in enumerate(pos) if p]
        total += sum(lse - row[j] for j in hits) / len(hits)
    return total / len(rows)


def _case():
    a, b, extra = _emb(4, seed=1), _emb(4, seed=2), _emb(8, seed=3)  # 2 extra candidates per anchor
    labels = [0, 1, 0, 2]
    extra_labels = [1, 2, 0, 1, 2, 2, 0, 1]  # extra 4 and 5 (anchor 2's) ... label 0 is a positive of 0, 2
    mask = torch.tensor([[labels[i] == labels[j] for j in range(4)] for i in range(4)])
    extra_pos = torch.tensor([[labels[i] == extra_labels[k] for k in range(8)] for i in range(4)])
    valid = torch.tensor([True] * 6 + [False] * 2)  # anchor 3 had no mined negatives
    return a, b, extra, mask, extra_pos, valid


def test_infonce_extends_the_anchor_rows_only():
    a, b, extra, mask, extra_pos, valid = _case()
    scale = torch.tensor(5.0, dtype=torch.float64)
    ctx = LossContext(scale, extra=extra, extra_positives=extra_pos, extra_valid=valid)
    got = build_pair_loss("infonce")(a, b, mask, ctx)
    rows = [[5.0 * float(a[i] @ b[j]) for j in range(4)]
            + [5.0 * float(a[i] @ extra[k]) if valid[k] else None for k in range(8)] for i in range(4)]
    pos = [[bool(mask[i, j]) for j in range(4)] + [bool(extra_pos[i, k] and valid[k]) for k in range(8)]
           for i in range(4)]
    back = [[5.0 * float(b[j] @ a[i]) for i in range(4)] for j in range(4)]
    back_pos = [[bool(mask[i, j]) for i in range(4)] for j in range(4)]
    assert got.item() == pytest.approx(0.5 * (_ce_rows(rows, pos) + _ce_rows(back, back_pos)), rel=1e-10)


def test_siglip_scores_the_extra_pairs():
    a, b, extra, mask, extra_pos, valid = _case()
    scale, bias = torch.tensor(5.0, dtype=torch.float64), torch.tensor(-2.0, dtype=torch.float64)
    ctx = LossContext(scale, bias, extra=extra, extra_positives=extra_pos, extra_valid=valid)
    got = build_pair_loss("siglip")(a, b, mask, ctx)
    total = 0.0
    for i in range(4):
        cands = [(b[j], bool(mask[i, j])) for j in range(4)]
        cands += [(extra[k], bool(extra_pos[i, k])) for k in range(8) if valid[k]]
        for c, p in cands:
            z = 1.0 if p else -1.0
            total -= math.log(1 / (1 + math.exp(-z * (5.0 * float(a[i] @ c) - 2.0))))
    assert got.item() == pytest.approx(total / 4, rel=1e-10)


def test_binding_scores_the_mined_pair_with_extras_in_either_order():
    a, b, extra, mask, extra_pos, valid = _case()
    scale = torch.tensor(5.0, dtype=torch.float64)
    emb = {"image": a, "text": b, extra_key("text"): extra}
    positives = WithExtra("image", "text", mask, extra_pos, valid)
    plain = LossContext(scale, extra=extra, extra_positives=extra_pos, extra_valid=valid)
    want = build_pair_loss("infonce")(a, b, mask, plain)
    for pair in (("image", "text"), ("text", "image")):
        got, parts = BindingLoss([pair], "infonce")(emb, positives, LossContext(scale))
        assert got.item() == pytest.approx(want.item(), rel=1e-12) and f"{pair[0]}-{pair[1]}" in parts
    with pytest.raises(UsageError, match="cannot take extra candidates.*infonce, siglip"):
        BindingLoss([("image", "text")], "triplet")(emb, positives, LossContext(scale))
