"""Pretrained image towers from Hugging Face: any AutoModel vision encoder (ViT, DINOv2, SigLIP's vision
model, ...) by hub id or local folder, with its image processor's mean, std and size."""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from jointspace.errors import UsageError
from jointspace.towers.groups import LayerGroups, layer_list_groups
from jointspace.towers.hub import resolve_hf
from jointspace.towers.registry import register_tower


def _size_field(size, key: str):
    return size.get(key) if isinstance(size, dict) else getattr(size, key, None)


def _processor_size(processor) -> tuple[int, int]:
    """(height, width) the image processor resizes (or centre-crops) to."""
    size = getattr(processor, "crop_size", None) if getattr(processor, "do_center_crop", False) else None
    size = size or getattr(processor, "size", None) or {"height": 224, "width": 224}
    if isinstance(size, int):
        return size, size
    height, width = _size_field(size, "height"), _size_field(size, "width")
    if height and width:
        return int(height), int(width)
    edge = int(_size_field(size, "shortest_edge") or 224)
    return edge, edge


class HFImageEncoder(nn.Module):
    """A transformers vision encoder over images in [-1, 1]: resized to the processor's size, normalised
    with its mean and std; pooled by the model's pooler when it has one, else the mean over tokens."""

    default_lora_targets = ("attention.output.dense", "self_attn.out_proj")  # ViT/DINOv2, SigLIP/CLIP vision

    def __init__(self, path: str | Path, pool: str = "auto", cache_dir: str | None = None):
        super().__init__()
        from transformers import AutoImageProcessor, AutoModel
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()
        if pool not in ("auto", "mean", "cls"):
            raise UsageError(f"pool must be auto, mean or cls, got {pool!r}")
        folder = resolve_hf(path, cache_dir, "hf_image model")
        model, loading = AutoModel.from_pretrained(folder, local_files_only=True, output_loading_info=True)
        model = model.float()
        if pool == "auto" and any("pooler" in k for k in loading.get("missing_keys", [])):
            pool = "cls"  # e.g. a classification checkpoint: its pooler would be random
        self.model = getattr(model, "vision_model", model)  # a two-tower model (SigLIP, CLIP): its vision half
        processor = AutoImageProcessor.from_pretrained(folder, local_files_only=True)
        self.size = _processor_size(processor)
        self.register_buffer("mean", torch.tensor(processor.image_mean, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        self.register_buffer("std", torch.tensor(processor.image_std, dtype=torch.float32).view(1, -1, 1, 1),
                             persistent=False)
        cfg = getattr(model.config, "vision_config", model.config)
        self.pool = pool
        self.out_dim = int(cfg.hidden_size)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = (x + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, self.mean.shape[1], -1, -1)
        if tuple(x.shape[-2:]) != self.size:
            x = F.interpolate(x, size=self.size, mode="bicubic", align_corners=False)
        out = self.model(pixel_values=(x - self.mean) / self.std)
        pooled = getattr(out, "pooler_output", None)
        if self.pool == "auto" and pooled is not None:
            return pooled
        h = out.last_hidden_state
        return h[:, 0] if self.pool == "cls" else h.mean(1)

    def layer_groups(self) -> LayerGroups:
        """Embeddings, each layer of the model's layer list (`encoder.layer.<i>` / `encoder.layers.<i>`),
        then the final norm and pooler or head."""
        return layer_list_groups(self)


@register_tower("hf_image", pretrained_tags=lambda: "path: any Hugging Face vision model id (org/name) or folder")
def hf_image(path: str, pool: str = "auto", cache_dir: str | None = None) -> HFImageEncoder:
    """Any Hugging Face vision encoder (AutoModel + AutoImageProcessor) by hub id or local folder."""
    return HFImageEncoder(path, pool, cache_dir)
