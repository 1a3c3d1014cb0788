"""Image towers: a small configurable CNN and a small ViT (timm)."""

from __future__ import annotations

import torch
from torch import nn

from jointspace.errors import UsageError
from jointspace.towers.groups import LayerGroups
from jointspace.towers.patch_dropout import timm_patch_dropout
from jointspace.towers.registry import register_tower


def _norm(norm: str, channels: int) -> nn.Module:
    if norm == "batch":
        return nn.BatchNorm2d(channels)
    if norm == "group":
        return nn.GroupNorm(min(8, channels), channels)
    if norm == "none":
        return nn.Identity()
    raise UsageError(f"norm must be batch/group/none, got {norm!r}")


class ConvNet(nn.Module):
    """Stages of (conv-norm-ReLU) x2 with downsampling by MaxPool2d or a strided conv; avg-pooled.

    Every stage but the first halves the resolution (the first too with `first_downsample`, used when
    the net continues another one's stages, as the shared trunk of intermediate fusion).
    """

    def __init__(
        self,
        in_chans: int = 3,
        channels: tuple[int, ...] = (32, 64, 128),
        downsample: str = "maxpool",
        norm: str = "batch",
        dropout: float = 0.0,
        first_downsample: bool = False,
    ):
        super().__init__()
        if downsample not in ("maxpool", "stride"):
            raise UsageError(f"downsample must be maxpool or stride, got {downsample!r}")
        layers: list[nn.Module] = []
        c_in = in_chans
        for i, c in enumerate(channels):
            down = i > 0 or first_downsample  # first_downsample: also halve before stage 0 (a later trunk)
            stride = 2 if (downsample == "stride" and down) else 1
            if downsample == "maxpool" and down:
                layers.append(nn.MaxPool2d(2))
            layers += [nn.Conv2d(c_in, c, 3, stride=stride, padding=1, bias=False), _norm(norm, c), nn.ReLU()]
            layers += [nn.Conv2d(c, c, 3, padding=1, bias=False), _norm(norm, c), nn.ReLU()]
            c_in = c
        self.features = nn.Sequential(*layers)
        self.drop = nn.Dropout(dropout)
        self.out_dim = c_in

    def forward_features(self, x: torch.Tensor) -> torch.Tensor:
        """Feature map [B, C, h, w] before pooling."""
        return self.features(x)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.drop(self.features(x).mean(dim=(2, 3)))


@register_tower("cnn")
def cnn(in_chans: int = 3, channels: tuple[int, ...] = (32, 64, 128), downsample: str = "maxpool",
        norm: str = "batch", dropout: float = 0.0, first_downsample: bool = False) -> ConvNet:
    """Scratch CNN for small images."""
    return ConvNet(in_chans, tuple(channels), downsample, norm, dropout, first_downsample)


class TimmViT(nn.Module):
    """A timm VisionTransformer returning the pooled token."""

    def __init__(self, vit: nn.Module):
        super().__init__()
        self.vit = vit
        self.out_dim = vit.num_features

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        return self.vit(x)

    def layer_groups(self) -> LayerGroups:
        """timm's own groups (its `group_matcher`, fine-grained as timm's layer-decay optimizer takes it):
        patch and position embeddings, each block, the final norm."""
        from timm.models import group_parameters

        named = dict(self.vit.named_parameters())
        ids = group_parameters(self.vit, self.vit.group_matcher(coarse=False))  # {layer id: parameter names}
        return [[(f"vit.{n}", named[n]) for n in names] for _, names in sorted(ids.items())]

    def set_patch_dropout(self, p: float) -> None:
        """timm's PatchDropout (its prefix tokens kept), as `patch_drop_rate=p` would build it."""
        timm_patch_dropout(self.vit, p)


@register_tower("vit")
def vit(img_size: int = 32, patch_size: int = 4, in_chans: int = 3, width: int = 96, depth: int = 4,
        heads: int = 4, mlp_ratio: float = 2.0, global_pool: str = "avg") -> TimmViT:
    """Small ViT built with timm's VisionTransformer (no pretrained weights)."""
    from timm.models.vision_transformer import VisionTransformer

    model = VisionTransformer(
        img_size=img_size, patch_size=patch_size, in_chans=in_chans, num_classes=0, embed_dim=width,
        depth=depth, num_heads=heads, mlp_ratio=mlp_ratio, global_pool=global_pool,
        class_token=global_pool == "token",
    )
    return TimmViT(model)
