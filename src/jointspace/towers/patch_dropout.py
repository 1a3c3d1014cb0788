"""Patch dropout (Li et al., "Scaling Language-Image Pre-training via Masking", FLIP; arXiv 2212.00794):
in training a ViT sees a random share `1 - p` of its image patch tokens (the class and other prefix
tokens always kept), so a step costs about that share of the full one; in evaluation it sees them all.

Each library's own module does it: a tower exposes `set_patch_dropout(p)` (open_clip's `PatchDropout`,
timm's `PatchDropout`), installed as the library's constructor installs it when given the rate.
`apply_patch_dropout` (model.tune_tower) refuses a tower without that method. The modules have no
parameters, so state dicts, checkpoints and `init_from` are the same with or without it, and they act
only in training mode (`dedupe.batch_independent` sees their `prob`, so identical inputs are not merged
while they drop tokens).
"""

from __future__ import annotations

from torch import nn

from jointspace.errors import UsageError


def apply_patch_dropout(tower: nn.Module, p: float, tower_name: str, frozen: bool = False) -> None:
    """Set the share `p` of patch tokens `tower` drops in training; refuses a tower without the method, and
    a frozen one (a locked tower stays in eval mode, where nothing is dropped)."""
    if frozen and p:
        raise UsageError("patch_dropout has no effect on a frozen tower (it stays in eval mode)")
    fn = getattr(tower, "set_patch_dropout", None)
    if fn is None:
        raise UsageError(f"tower {tower_name!r} does not support patch_dropout (open_clip and timm ViT towers do)")
    fn(p)


def timm_patch_dropout(vit: nn.Module, p: float) -> None:
    """timm's PatchDropout on a timm VisionTransformer, keeping its `num_prefix_tokens` (class and register
    tokens), as `VisionTransformer(patch_drop_rate=p)` builds it; p = 0 restores its Identity."""
    from timm.layers import PatchDropout
    from timm.models.vision_transformer import VisionTransformer

    if not isinstance(vit, VisionTransformer):
        raise UsageError(f"patch_dropout: timm {type(vit).__name__} is not a timm VisionTransformer")
    vit.patch_drop = PatchDropout(p, num_prefix_tokens=vit.num_prefix_tokens) if p > 0 else nn.Identity()
