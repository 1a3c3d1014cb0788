"""The `points` kind's tower (`pointnet`): PointNet's shared per-point MLP and a symmetric max-pool over a
point cloud (Qi et al., 2017)."""

from __future__ import annotations

import torch
from torch import nn

from jointspace.towers.registry import register_tower


class PointNet(nn.Module):
    """Per-point Linear-LayerNorm-ReLU layers shared over points, then max and mean pooling over the
    valid points of each cloud ([B, N, D] padded, `lengths` [B]). LayerNorm acts per point, so padding
    never enters the statistics; the pooled vector is invariant to the order of the points."""

    def __init__(self, in_features: int = 3, widths: tuple[int, ...] = (64, 128, 256), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_features
        for c in widths:
            layers += [nn.Linear(c_in, c), nn.LayerNorm(c), nn.ReLU()]
            c_in = c
        self.mlp = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.out_dim = 2 * c_in

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        h = self.mlp(x)  # [B, N, C]
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], device=x.device)
        valid = (torch.arange(x.shape[1], device=x.device)[None] < lengths[:, None])[..., None]  # [B, N, 1]
        peak = h.masked_fill(~valid, float("-inf")).amax(1)
        peak = torch.where(valid.any(1), peak, torch.zeros_like(peak))  # an empty cloud pools to zeros
        mean = (h * valid).sum(1) / valid.sum(1).clamp(min=1)
        return self.drop(torch.cat([peak, mean], dim=1))


@register_tower("pointnet")
def pointnet(in_features: int = 3, widths: tuple[int, ...] = (64, 128, 256), dropout: float = 0.0) -> PointNet:
    """PointNet-style encoder for point clouds [B, N, 3|4] with lengths (shared MLP + max/mean pool)."""
    return PointNet(in_features, tuple(widths), dropout)
