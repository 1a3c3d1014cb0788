"""Projection heads from a tower's width to the shared embedding dimension."""

from __future__ import annotations

from torch import nn


def build_head(in_dim: int, embed_dim: int, kind: str = "linear", hidden: int = 256, dropout: float = 0.0) -> nn.Module:
    """A linear or two-layer MLP projection."""
    if kind == "linear":
        return nn.Linear(in_dim, embed_dim, bias=False)
    if kind == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, embed_dim))
    raise ValueError(f"head kind must be linear or mlp, got {kind!r}")
