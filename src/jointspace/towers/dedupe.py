"""Identical inputs of a batch encoded once: with label positives a batch of 128 may hold ten distinct
captions. The unique rows go through the tower and the results are gathered back, so the forward values
are the same and the backward pass sums the duplicates' gradients, as it would over the plain batch.

That holds only for a tower whose output for a row does not depend on the rest of the batch or on
random draws: no BatchNorm in training mode, no active dropout. `batch_independent` checks that.
"""

from __future__ import annotations

import torch
from torch import nn

_DROPOUTS = (nn.Dropout, nn.Dropout1d, nn.Dropout2d, nn.Dropout3d, nn.AlphaDropout)


def batch_independent(tower: nn.Module) -> bool:
    """True when each output row depends only on its own input row (as far as the modules tell)."""
    for m in tower.modules():
        if not m.training:
            continue
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            return False
        if isinstance(m, _DROPOUTS) and m.p > 0:
            return False
        attrs = ("dropout", "attention_dropout", "prob", "drop_prob")  # MHA, HF attention, PatchDropout, DropPath
        if type(m).__name__ in ("StochasticDepth", "DropPath"):
            attrs += ("p",)
        for attr in attrs:
            value = getattr(m, attr, None)
            if isinstance(value, float) and value > 0:
                return False
    return True


def unique_rows(x: torch.Tensor, lengths: torch.Tensor | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(index of one representative per distinct row, inverse [B]: the representative of each row)."""
    wide = torch.float64 if x.is_floating_point() else torch.int64  # exact for every value and length
    flat = x.reshape(len(x), -1).to(wide)
    if lengths is not None:
        flat = torch.cat([flat, lengths.reshape(-1, 1).to(wide)], dim=1)
    _, inverse = torch.unique(flat, dim=0, return_inverse=True)
    first = torch.full((int(inverse.max()) + 1,), len(x), dtype=torch.long, device=x.device)
    first.scatter_reduce_(0, inverse, torch.arange(len(x), device=x.device), reduce="amin")
    return first, inverse


def distinct_rows(x: torch.Tensor, lengths: torch.Tensor | None = None,
                  min_saving: float = 0.1) -> tuple[torch.Tensor, torch.Tensor] | None:
    """(first, inverse) of `unique_rows` when at least `min_saving` of the rows repeat, else None (the
    plain call is then cheaper). Meant for the host: it reads the values."""
    if len(x) < 2:
        return None
    first, inverse = unique_rows(x, lengths)
    return (first, inverse) if len(first) <= (1 - min_saving) * len(x) else None


def encode_unique(encode, x: torch.Tensor, lengths: torch.Tensor | None, min_saving: float = 0.1):
    """`encode(x, lengths)` over the distinct rows only, gathered back to [B, ...] (unless fewer than
    `min_saving` of the rows repeat, when the plain call is cheaper)."""
    found = distinct_rows(x, lengths, min_saving)
    if found is None:
        return encode(x, lengths)
    first, inverse = found
    return encode(x[first], None if lengths is None else lengths[first])[inverse]
