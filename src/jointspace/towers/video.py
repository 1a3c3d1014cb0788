"""Video tower over frames [B, T, C, H, W]: 3-D convolutions (time and space), then a mean over all of it."""

from __future__ import annotations

import torch
from torch import nn

from jointspace.towers.registry import register_tower


class ClipConvNet(nn.Module):
    """Conv3d blocks (kernel 3 over time and space, space halved by each), GroupNorm, GELU; mean pooled.
    Motion (a direction) is seen by the kernels that span neighbouring frames."""

    def __init__(self, in_chans: int = 3, channels: tuple[int, ...] = (16, 32), dropout: float = 0.0):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_chans
        for c in channels:
            layers += [nn.Conv3d(c_in, c, 3, stride=(1, 2, 2), padding=1), nn.GroupNorm(min(8, c), c), nn.GELU()]
            c_in = c
        self.net = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.out_dim = c_in

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(x.transpose(1, 2))  # [B, T, C, H, W] -> [B, C', T, H', W']
        return self.drop(h.mean(dim=(2, 3, 4)))


@register_tower("video_cnn")
def video_cnn(in_chans: int = 3, channels: tuple[int, ...] = (16, 32), dropout: float = 0.0) -> ClipConvNet:
    """Small 3-D CNN for [B, T, C, H, W] video clips."""
    return ClipConvNet(in_chans, tuple(channels), dropout)
