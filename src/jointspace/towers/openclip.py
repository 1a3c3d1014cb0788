"""open_clip towers: any open_clip architecture by name, pretrained weights by open_clip tag (its pretrained
registry, e.g. `laion2b_s34b_b79k`, `openai`), by `hf-hub:org/name`, or from a local checkpoint file.

`openclip_image` keeps the model's vision tower, `openclip_text` its text tower (built as open_clip's
CustomTextCLIP so the text tower is one module; checkpoints in the classic CLIP layout convert on load).
Tags and hub ids download through open_clip / huggingface_hub into `cache_dir` (default: HF_HOME's cache)
and honour HF_HUB_OFFLINE; a file path is never downloaded. `pretrained: null` starts from random weights.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from jointspace.errors import UsageError
from jointspace.towers.groups import LayerGroups, groups_from_lock
from jointspace.towers.hub import describe_openclip_tags, missing, openclip_source, openclip_tags
from jointspace.towers.patch_dropout import timm_patch_dropout
from jointspace.towers.registry import register_tower

OPENAI_MEAN = (0.48145466, 0.4578275, 0.40821073)
OPENAI_STD = (0.26862954, 0.26130258, 0.27577711)
HF_HUB = "hf-hub:"


def _from_hub(model_id: str, cache_dir: str | None) -> nn.Module:
    """An open_clip model whose architecture and weights live in a hub repository."""
    import open_clip
    from open_clip.pretrained import download_pretrained_from_hf

    repo = model_id.removeprefix(HF_HUB)
    try:  # open_clip itself would go on with random weights if these were missing
        download_pretrained_from_hf(repo, cache_dir=cache_dir)
        return open_clip.create_model(HF_HUB + repo, cache_dir=cache_dir, force_custom_text=True,
                                      pretrained_text=False)
    except (RuntimeError, OSError) as err:
        raise missing(f"open_clip model {model_id!r}", repo, cache_dir, err) from None


def _from_tag(model: str, tag: str, cache_dir: str | None) -> nn.Module:
    import open_clip
    from open_clip.pretrained import download_pretrained

    cfg = open_clip.get_pretrained_cfg(model, tag)
    try:  # into the cache first (or found there), so that what fails here is the download
        download_pretrained(cfg, cache_dir=cache_dir)
    except Exception as err:  # noqa: BLE001 - any failure to fetch is "not in the cache and cannot be fetched"
        repo, filename = openclip_source(model, tag)
        hint = None if not repo.startswith("http") else (
            f"HF_HUB_OFFLINE=0 python -c \"import open_clip; open_clip.create_model('{model}', "
            f"pretrained='{tag}', cache_dir={cache_dir!r})\"")
        raise missing(f"open_clip {model} weights {tag!r}", repo, cache_dir, err, filename, hint) from None
    try:  # a tag trained with QuickGELU loads into a QuickGELU model (open_clip itself only warns)
        return open_clip.create_model(model, pretrained=tag, cache_dir=cache_dir, force_custom_text=True,
                                      pretrained_text=False, force_quick_gelu=bool(cfg.get("quick_gelu")))
    except RuntimeError as err:
        raise UsageError(f"open_clip {model} weights {tag!r} do not load: {err}") from None


def create_clip(model: str, pretrained: str | None = None, cache_dir: str | None = None) -> nn.Module:
    """An open_clip model by architecture name (or `hf-hub:org/name`), with weights from an open_clip tag,
    a hub repository, a local file, or random when `pretrained` is None."""
    import open_clip

    if pretrained is not None and str(pretrained).startswith(HF_HUB):
        model, pretrained = str(pretrained), None  # the repository holds the architecture and the weights
    if model.startswith(HF_HUB):
        return _from_hub(model, cache_dir)
    if model not in open_clip.list_models():
        raise UsageError(f"unknown open_clip architecture {model!r} (e.g. ViT-B-32, RN50, ViT-S-16)")
    if pretrained is None:
        return open_clip.create_model(model, force_custom_text=True, pretrained_text=False, load_weights=False)
    path = Path(pretrained).expanduser()
    if path.is_file():
        try:
            return open_clip.create_model(model, pretrained=str(path), force_custom_text=True, pretrained_text=False)
        except RuntimeError as err:
            raise UsageError(f"{path}: not a checkpoint of open_clip's {model} ({err})") from None
    tags = openclip_tags(model)
    if pretrained in tags:
        return _from_tag(model, pretrained, cache_dir)
    raise FileNotFoundError(f"{pretrained}: neither a checkpoint file nor an open_clip tag of {model} "
                            f"(its tags: {', '.join(tags) or 'none'}); a file path is never downloaded")


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

    def layer_groups(self) -> LayerGroups:
        """The groups open_clip's `visual.lock(unlocked_groups)` unlocks (ViT: patch embedding with ln_pre,
        each block, the last block with ln_post, the projection)."""
        return _lock_groups(self, lambda n: self.visual.lock(unlocked_groups=n))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.visual.set_grad_checkpointing(enable)

    def set_patch_dropout(self, p: float) -> None:
        """open_clip's PatchDropout on its VisionTransformer (class token kept: `exclude_first_token`), as
        `create_model(force_patch_dropout=p)` builds it; timm's on a timm ViT trunk (open_clip's TimmModel)."""
        from open_clip.transformer import PatchDropout

        if hasattr(self.visual, "patch_dropout"):
            self.visual.patch_dropout = PatchDropout(p, exclude_first_token=True) if p > 0 else nn.Identity()
        elif hasattr(getattr(self.visual, "trunk", None), "patch_drop"):
            timm_patch_dropout(self.visual.trunk, p)
        else:
            raise UsageError(f"patch_dropout: open_clip's {type(self.visual).__name__} image tower has no patch "
                             "dropout (only ViTs have one)")


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
            raise UsageError(f"{ids.shape[1]} tokens exceed the model's context length {self.context_length}")
        if self.trims_padding:
            return self._forward_trimmed(ids)
        return self.text(F.pad(ids, (0, self.context_length - ids.shape[1])))  # its causal mask has a fixed size

    def host_width(self, ids: torch.Tensor) -> int:
        """The token columns this batch needs: 1 + its last end-of-text position when the tower can skip
        the rest (`trims_padding`), else all. Reads the ids: call it on the host (the model does, before
        a training step), the forward then takes the width it is given."""
        if not self.trims_padding or not len(ids):
            return ids.shape[1]
        t = self.text
        eos = ids.argmax(1) if t.pool_type == "argmax" else (ids == t.eos_id).int().argmax(1)
        return int(eos.max()) + 1

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
        """open_clip's TextTransformer.forward on the L positions given (the model cuts the ids to
        `host_width`, 1 + the last end-of-text position in the batch): the same pooled features and
        gradients as on the padded context, with the text tower's cost cut by the share of padding (CLIP
        captions are mostly padding). No value of `ids` is read here."""
        from open_clip.transformer import text_global_pool

        t = self.text
        n = ids.shape[1]
        cast = t.transformer.get_cast_dtype()
        x = t.token_embedding(ids).to(cast) + t.positional_embedding[:n].to(cast)
        x = t.ln_final(t.transformer(x, attn_mask=t.attn_mask[:n, :n]))
        pooled = text_global_pool(x, ids, pool_type=t.pool_type, eos_token_id=getattr(t, "eos_id", None))
        if t.text_projection is None:
            return pooled
        return t.text_projection(pooled) if isinstance(t.text_projection, nn.Linear) else pooled @ t.text_projection

    def layer_groups(self) -> LayerGroups:
        """The groups open_clip's `text.lock(unlocked_layers)` unlocks (embeddings, each block, the last
        block with ln_final, the projection)."""
        return _lock_groups(self, lambda n: self.text.lock(n))

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        self.text.set_grad_checkpointing(enable)


def _lock_groups(tower: nn.Module, lock) -> LayerGroups:
    try:
        return groups_from_lock(tower, lock)
    except (AssertionError, AttributeError, RuntimeError) as err:  # e.g. ModifiedResNet: "partial locking not supported"
        raise UsageError(f"this open_clip tower cannot be unlocked by groups: {err}") from None


def _has_text_pool() -> bool:
    """open_clip versions with `transformer.text_global_pool` (the pooling the trimmed forward reuses)."""
    import open_clip.transformer

    return hasattr(open_clip.transformer, "text_global_pool")


def _tokenizer_spec(params: dict) -> str:
    """open_clip's tokenizer of the tower's architecture (a hub repository's own, when it names one)."""
    pretrained = str(params.get("pretrained") or "")
    model = pretrained if pretrained.startswith(HF_HUB) else params.get("model", "ViT-B-32")
    return f"openclip:{model}" + (f"|{params['cache_dir']}" if params.get("cache_dir") else "")


@register_tower("openclip_image", pretrained_tags=describe_openclip_tags)
def openclip_image(model: str = "ViT-B-32", pretrained: str | None = None,
                   cache_dir: str | None = None) -> OpenCLIPImage:
    """Vision tower of an open_clip architecture; `pretrained`: an open_clip tag, hf-hub:org/name or a file."""
    return OpenCLIPImage(create_clip(model, pretrained, cache_dir))


@register_tower("openclip_text", tokenizer=_tokenizer_spec, pretrained_tags=describe_openclip_tags)
def openclip_text(model: str = "ViT-B-32", pretrained: str | None = None,
                  cache_dir: str | None = None) -> OpenCLIPText:
    """Text tower of an open_clip architecture; tokenizes with that model's tokenizer."""
    return OpenCLIPText(create_clip(model, pretrained, cache_dir))
