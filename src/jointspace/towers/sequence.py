"""The `sequence` kind's tower (`frames_cnn`): audio feature frames (MFCC / log-mel) with lengths, 1-D
convolutions, masked pooling."""

from __future__ import annotations

import torch
from torch import nn

from jointspace.towers.registry import register_tower


class FrameConvNet(nn.Module):
    """Conv1d blocks over time, then mean+max pooling over the valid frames."""

    def __init__(self, in_features: int = 13, channels: tuple[int, ...] = (64, 128, 128), kernel: int = 5,
                 norm: str = "batch", dropout: float = 0.1):
        super().__init__()
        layers: list[nn.Module] = []
        c_in = in_features
        for c in channels:
            norm_layer = nn.BatchNorm1d(c) if norm == "batch" else nn.GroupNorm(min(8, c), c)
            layers += [nn.Conv1d(c_in, c, kernel, padding=kernel // 2, bias=False), norm_layer, nn.GELU()]
            c_in = c
        self.net = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.out_dim = 2 * c_in

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        h = self.net(x.transpose(1, 2))  # [B, C, T]
        if lengths is None:
            lengths = torch.full((x.shape[0],), x.shape[1], device=x.device)
        mask = (torch.arange(h.shape[-1], device=x.device)[None] < lengths[:, None]).unsqueeze(1)
        mean = (h * mask).sum(-1) / mask.sum(-1).clamp(min=1)
        peak = h.masked_fill(~mask, float("-inf")).amax(-1)
        return self.drop(torch.cat([mean, peak], dim=1))


@register_tower("frames_cnn")
def frames_cnn(in_features: int = 13, channels: tuple[int, ...] = (64, 128, 128), kernel: int = 5,
               norm: str = "batch", dropout: float = 0.1) -> FrameConvNet:
    """1-D CNN for [B, T, F] feature sequences."""
    return FrameConvNet(in_features, tuple(channels), kernel, norm, dropout)
