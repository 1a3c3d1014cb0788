"""Projection heads from a tower's width to the shared embedding dimension."""

from __future__ import annotations

from torch import nn

from jointspace.errors import UsageError


class NoHead(nn.Identity):
    """No projection: the tower's own output is the embedding (a pretrained CLIP tower already projects)."""

    def __init__(self, dim: int):
        super().__init__()
        self.dim = dim


def build_head(in_dim: int, embed_dim: int, head_type: str = "linear", hidden: int = 256,
               dropout: float = 0.0) -> nn.Module:
    """A linear or two-layer MLP projection, or none (the tower's width must then be embed_dim)."""
    if head_type == "none":
        if in_dim != embed_dim:
            raise UsageError(f"model.head.type: none keeps the tower's width {in_dim}, but model.embed_dim is "
                             f"{embed_dim}: set model.embed_dim: {in_dim}")
        return NoHead(in_dim)
    if head_type == "linear":
        return nn.Linear(in_dim, embed_dim, bias=False)
    if head_type == "mlp":
        return nn.Sequential(nn.Linear(in_dim, hidden), nn.GELU(), nn.Dropout(dropout), nn.Linear(hidden, embed_dim))
    raise UsageError(f"model.head.type must be linear, mlp or none, got {head_type!r}")
