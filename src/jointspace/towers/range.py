"""The `range` kind's tower (`range_cnn`): depth / LiDAR range images, a CNN over the azimuth x zenith grid."""

from __future__ import annotations

from jointspace.towers.image import ConvNet
from jointspace.towers.registry import register_tower


@register_tower("range_cnn")
def range_cnn(in_chans: int = 1, channels: tuple[int, ...] = (32, 64, 128), downsample: str = "maxpool",
              norm: str = "batch", dropout: float = 0.0, first_downsample: bool = False) -> ConvNet:
    """CNN for single-channel range images [B, 1, n_zenith, n_azimuth]."""
    return ConvNet(in_chans, tuple(channels), downsample, norm, dropout, first_downsample)
