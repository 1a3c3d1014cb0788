"""Parameter-efficient tuning of a tower: LoRA adapters (peft), freezing, gradient checkpointing.

LoRA targets are module-name suffixes matched at dot boundaries (`attention.output.dense` matches
`encoder.layer.3.attention.output.dense`). They are resolved here into exact module names, so a
target that matches nothing fails naming itself, and peft adapts exactly those modules.

`torch.nn.MultiheadAttention` (open_clip's and torch's transformer blocks) is special: its forward
reads `out_proj.weight` directly and never calls `out_proj`, so a peft adapter on that `out_proj` would
be silently ignored. peft's own MultiheadAttention support adapts in- and output projection together
and merges/unmerges the weights around every forward (the frozen weights drift by rounding). So a
target naming the `out_proj` of an `nn.MultiheadAttention` first swaps that module for
`ProjectedAttention` (same parameters, same names, same result) which calls `out_proj` as a module; peft
then adapts exactly that `nn.Linear`. A target naming the attention module itself gets peft's
MultiheadAttention adapter (q, k, v and output).
"""

from __future__ import annotations

import re

import torch
import torch.nn.functional as F
from torch import nn

from jointspace.errors import UsageError

LORA_MARK = "lora_"  # peft's adapter parameters all have this in their names


def _matches(name: str, target: str) -> bool:
    return name == target or name.endswith("." + target)


class ProjectedAttention(nn.Module):
    """Self-attention with the parameters of an `nn.MultiheadAttention` and its call signature, whose
    output projection is an `nn.Linear` called in forward (so it can carry an adapter)."""

    def __init__(self, mha: nn.MultiheadAttention):
        super().__init__()
        if not mha._qkv_same_embed_dim or mha.bias_k is not None or mha.add_zero_attn:
            raise UsageError("only self-attention with packed q/k/v projections can take an out_proj adapter")
        self.in_proj_weight = mha.in_proj_weight
        self.in_proj_bias = mha.in_proj_bias
        self.out_proj = mha.out_proj
        self.embed_dim, self.num_heads, self.dropout = mha.embed_dim, mha.num_heads, mha.dropout
        self.batch_first = mha.batch_first
        self._qkv_same_embed_dim = False  # keeps torch's fused fast path (reads out_proj.weight) off

    def forward(self, query: torch.Tensor, key: torch.Tensor | None = None, value: torch.Tensor | None = None,
                key_padding_mask: torch.Tensor | None = None, need_weights: bool = False,
                attn_mask: torch.Tensor | None = None, average_attn_weights: bool = True,
                is_causal: bool = False) -> tuple[torch.Tensor, None]:
        if need_weights:
            raise UsageError("ProjectedAttention does not return attention weights")
        x = query if self.batch_first else query.transpose(0, 1)  # [B, L, D]
        b, n, d = x.shape
        q, k, v = F.linear(x, self.in_proj_weight, self.in_proj_bias).view(b, n, 3, self.num_heads, -1).unbind(2)
        mask = self._merged_mask(attn_mask, key_padding_mask, b, n, x.dtype)
        h = F.scaled_dot_product_attention(q.transpose(1, 2), k.transpose(1, 2), v.transpose(1, 2), attn_mask=mask,
                                           dropout_p=self.dropout if self.training else 0.0,
                                           is_causal=is_causal and mask is None)
        out = self.out_proj(h.transpose(1, 2).reshape(b, n, d))
        return (out if self.batch_first else out.transpose(0, 1)), None

    def _merged_mask(self, attn_mask, key_padding_mask, b: int, n: int, dtype) -> torch.Tensor | None:
        """Additive float mask broadcastable to [B, heads, L, L] (True in a bool mask = not allowed)."""
        def additive(m: torch.Tensor) -> torch.Tensor:
            return torch.zeros_like(m, dtype=dtype).masked_fill(m, float("-inf")) if m.dtype == torch.bool else m.to(dtype)

        mask = None
        if attn_mask is not None:
            mask = additive(attn_mask)
            mask = mask.view(b, self.num_heads, n, n) if mask.dim() == 3 else mask
        if key_padding_mask is not None:
            pad = additive(key_padding_mask).view(b, 1, 1, n)
            mask = pad if mask is None else mask + pad
        return mask


def _swap_for_projected(module: nn.Module, mha_name: str) -> None:
    parent_name, _, leaf = mha_name.rpartition(".")
    parent = module.get_submodule(parent_name) if parent_name else module
    setattr(parent, leaf, ProjectedAttention(getattr(parent, leaf)))


def resolve_targets(module: nn.Module, targets: list[str]) -> list[str]:
    """Exact names of the modules that `targets` (name suffixes) select; fails on a target matching nothing.

    Swaps an `nn.MultiheadAttention` whose `out_proj` is targeted for a `ProjectedAttention` (in place)."""
    modules = dict(module.named_modules())
    found: list[str] = []
    for target in targets:
        hits = [n for n in modules if n and _matches(n, target)]
        if not hits:
            raise UsageError(f"lora target {target!r} matches no module of the tower "
                             f"(e.g. {', '.join(list(modules)[1:6])}, ...)")
        for name in hits:
            parent_name, _, leaf = name.rpartition(".")
            if leaf == "out_proj" and isinstance(modules.get(parent_name), nn.MultiheadAttention):
                _swap_for_projected(module, parent_name)  # see the module docstring
                modules = dict(module.named_modules())
            mod = modules[name]
            if not isinstance(mod, (nn.Linear, nn.MultiheadAttention, nn.Conv2d, nn.Embedding)):
                raise TypeError(f"lora target {target!r}: {name} is a {type(mod).__name__}; "
                                 "LoRA needs Linear, Conv2d, Embedding or MultiheadAttention modules")
            if name not in found:
                found.append(name)
    return found


def apply_lora(module: nn.Module, targets: list[str] | tuple[str, ...], r: int = 8, alpha: float = 16.0,
               dropout: float = 0.0) -> list[str]:
    """Inject LoRA adapters (peft) into `module` in place and freeze everything else; returns adapted names."""
    from peft import LoraConfig, inject_adapter_in_model

    names = resolve_targets(module, targets)
    pattern = "(?:" + "|".join(re.escape(n) for n in names) + ")"  # peft fullmatches a string pattern
    config = LoraConfig(r=r, lora_alpha=alpha, lora_dropout=dropout, target_modules=pattern, bias="none")
    inject_adapter_in_model(config, module)
    for name, p in module.named_parameters():
        p.requires_grad_(LORA_MARK in name)
    return names


def merge_lora(module: nn.Module) -> nn.Module:
    """`module` with every peft LoRA layer merged into its base layer and replaced by it, in place: a
    plain module again (the parameter names of the tower before adapters were added)."""
    for name, sub in list(module.named_modules()):
        if name and hasattr(sub, "base_layer") and hasattr(sub, "merge"):
            sub.merge()
            parent, _, attr = name.rpartition(".")
            setattr(module.get_submodule(parent) if parent else module, attr, sub.base_layer)
    for p in module.parameters():
        p.requires_grad_(True)
    return module


def freeze(module: nn.Module) -> None:
    """No gradients for any parameter of `module` (a locked tower, as in LiT)."""
    for p in module.parameters():
        p.requires_grad_(False)


def enable_grad_checkpointing(tower: nn.Module, tower_name: str) -> None:
    """Recompute activations in backward instead of storing them (the tower must support it)."""
    fn = getattr(tower, "set_grad_checkpointing", None)
    if fn is None:
        raise UsageError(f"tower {tower_name!r} does not support grad_checkpointing")
    fn(True)


def parameter_summary(model: nn.Module) -> str:
    """'trainable 1.2M of 23.4M' per top-level tower and head of a JointModel, one line."""

    def fmt(n: int) -> str:
        return f"{n / 1e6:.2f}M" if n >= 1e6 else f"{n / 1e3:.1f}k" if n >= 1e3 else str(n)

    def count(m: nn.Module) -> tuple[int, int]:
        ps = list(m.parameters())
        return sum(p.numel() for p in ps if p.requires_grad), sum(p.numel() for p in ps)

    parts = []
    for group in ("towers", "heads"):
        for name, sub in getattr(model, group, {}).items():
            t, a = count(sub)
            parts.append(f"{group[:-1]} {name}: {fmt(t)}/{fmt(a)}")
    t, a = count(model)
    return f"{t:,} trainable of {a:,} parameters ({'; '.join(parts)})"
