"""open_clip towers: any open_clip architecture by name, weights from a local checkpoint file.

`openclip_image` keeps the model's vision tower, `openclip_text` its text tower (built as open_clip's
CustomTextCLIP so the text tower is one module; checkpoints in the classic CLIP layout convert on load).
Nothing is fetched: `pretrained` must be an existing file (`.pt`, `.bin`, `.safetensors`), else the
tower starts from a random initialisation when `pretrained` is None.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from jointspace.towers.registry import register_tower

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)


def create_clip(model: str, pretrained: str | None = None) -> nn.Module:
    """An open_clip model by architecture name, with weights from a local file (or random when None)."""
    import open_clip

    if model not in open_clip.list_models():
        raise ValueError(f"unknown open_clip architecture {model!r} (e.g. ViT-B-32, RN50, ViT-S-16)")
    if pretrained is not None:
        path = Path(pretrained).expanduser()
        if not path.is_file():  # open_clip would read a missing path as a hub tag and try to download
            raise FileNotFoundError(f"{path}: no such checkpoint file (open_clip weights are never downloaded)")
        pretrained = str(path)
    return open_clip.create_model(model, pretrained=pretrained, force_custom_text=True, pretrained_text=False,
                                  load_weights=pretrained is not None)


class OpenCLIPImage(nn.Module):
    """open_clip vision tower; takes images in [-1, 1] of any size/channels, resizes and normalises."""

    default_lora_targets = ("attn.out_proj",)  # attention output projections (see towers/lora.py)

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.visual = clip.visual
        size = self.visual.image_size
        self.image_size = tuple(size) if isinstance(size, (tuple, list)) else (size, size)
        cfg = getattr(self.visual, "preprocess_cfg", None) or {}
        self.register_buffer("mean", torch.tensor(cfg.get("mean", OPENAI_MEAN)).view(1, 3, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(cfg.get("std", OPENAI_STD)).view(1, 3, 1, 1), persistent=False)
        self.out_dim = int(self.visual.output_dim)

    def forward(self, x: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        x = (x + 1) / 2
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        if tuple(x.shape[-2:]) != self.image_size:
            x = F.interpolate(x, size=self.image_size, mode="bicubic", align_corners=False)
        return self.visual((x - self.mean) / self.std)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)


class OpenCLIPText(nn.Module):
    """open_clip text tower over BPE ids (pooled at the end-of-text token, projected)."""

    default_lora_targets = ("attn.out_proj",)

    def __init__(self, clip: nn.Module):
        super().__init__()
        self.text = clip.text
        self.context_length = int(clip.text.context_length)
        self.out_dim = int(clip.text.output_dim)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        if ids.shape[1] > self.context_length:
            raise ValueError(f"{ids.shape[1]} tokens exceed the model's context length {self.context_length}")
        if self.trims_padding:
            return self._forward_trimmed(ids)
        return self.text(F.pad(ids, (0, self.context_length - ids.shape[1])))  # its causal mask has a fixed size

    @property
    def trims_padding(self) -> bool:
        """True for a causal text tower pooled at its end-of-text token (CLIP's): positions after the last
        end-of-text token of the batch can change neither the pooled output nor any gradient (causal
        attention looks only backwards), so they need not be computed at all."""
        t = self.text
        return (getattr(t, "attn_mask", None) is not None and getattr(t, "cls_emb", True) is None
                and not getattr(t, "use_pad_mask", True) and getattr(t, "pool_type", None) in ("argmax", "eos")
                and not getattr(t, "output_tokens", True) and hasattr(t, "transformer") and _has_text_pool())

    def _forward_trimmed(self, ids: torch.Tensor) -> torch.Tensor:
        """open_clip's TextTransformer.forward on the first L positions only, L = 1 + the last end-of-text
        position in the batch: the same pooled features and gradients as on the padded context, with
        the text tower's cost cut by the share of padding (CLIP captions are mostly padding)."""
        from open_clip.transformer import text_global_pool

        t = self.text
        eos = ids.argmax(1) if t.pool_type == "argmax" else (ids == t.eos_id).int().argmax(1)
        n = int(eos.max()) + 1
        ids = ids[:, :n]
        cast = t.transformer.get_cast_dtype()
        x = t.token_embedding(ids).to(cast) + t.positional_embedding[:n].to(cast)
        x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask[:n, :n]))
        pooled = text_global_pool(x, ids, pool_type=t.pool_type, eos_token_id=getattr(t, "eos_id", None))
        if t.text_projection is None:
            return pooled
        return t.text_projection(pooled) if isinstance(t.text_projection, nn.Linear) else pooled @ t.text_projection

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.text.set_grad_checkpointing(enable)


def _has_text_pool() -> bool:
    """open_clip versions with `transformer.text_global_pool` (the pooling the trimmed forward reuses)."""
    import open_clip.transformer

    return hasattr(open_clip.transformer, "text_global_pool")


@register_tower("openclip_image")
def openclip_image(model: str = "ViT-B-32", pretrained: str | None = None) -> OpenCLIPImage:
    """Vision tower of an open_clip architecture; `pretrained`: local checkpoint file of the whole model."""
    return OpenCLIPImage(create_clip(model, pretrained))


@register_tower("openclip_text", tokenizer=lambda params: f"openclip:{params.get('model', 'ViT-B-32')}")
def openclip_text(model: str = "ViT-B-32", pretrained: str | None = None) -> OpenCLIPText:
    """Text tower of an open_clip architecture; tokenizes with that model's tokenizer."""
    return OpenCLIPText(create_clip(model, pretrained))
