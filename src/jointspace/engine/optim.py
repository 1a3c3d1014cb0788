"""AdamW with decoupled weight decay (none on norms, biases, embeddings' scale), per-group learning-rate scales
(layer decay), and warmup + cosine."""

from __future__ import annotations

import math

import torch
from torch import nn

from jointspace.config import TrainConfig
from jointspace.towers.groups import parameter_lr_scales


def build_optimizer(model: nn.Module, cfg: TrainConfig, fused: bool | None = None) -> torch.optim.AdamW:
    # cfg: any train section with lr and weight_decay (and betas; default torch's)
    """AdamW; parameters with ndim < 2 (norms, biases, logit scale) get no weight decay.

    `fused` None: torch's fused kernel wherever it has one for the parameters' device (CUDA and, since
    torch 2.4, CPU), the per-tensor loop otherwise. The update is the same; on CPU the fused kernel does
    one pass over each tensor instead of about ten elementwise passes (see BENCHMARKS.md).

    Towers with `layer_decay` give their parameters learning-rate scales (towers/groups.py): one pair of
    groups (decay, no decay) per scale, largest first, each at lr x its `lr_scale`."""
    scales = parameter_lr_scales(model)
    by_scale: dict[float, tuple[list, list]] = {}
    for p in model.parameters():
        if p.requires_grad:
            decay, no_decay = by_scale.setdefault(scales.get(id(p), 1.0), ([], []))
            (decay if p.ndim >= 2 else no_decay).append(p)
    groups = [{"params": params, "weight_decay": wd, "lr": cfg.lr * s, "lr_scale": s}
              for s in sorted(by_scale or {1.0: None}, reverse=True)
              for params, wd in zip(by_scale.get(s, ([], [])), (cfg.weight_decay, 0.0), strict=True)]
    kwargs = {"lr": cfg.lr, "betas": tuple(getattr(cfg, "betas", (0.9, 0.999))), "eps": 1e-8}
    params = [p for g in groups for p in g["params"]]
    auto = fused is None
    if auto:
        fused = bool(params) and all(p.is_floating_point() and p.device.type in ("cuda", "cpu") for p in params)
    if fused:
        try:
            return torch.optim.AdamW(groups, fused=True, **kwargs)
        except (RuntimeError, ValueError):  # a torch build without the kernel for this device/dtype
            if not auto:
                raise
    return torch.optim.AdamW(groups, **kwargs)


def warmup_cosine(step: int, warmup_steps: int, total_steps: int, min_lr_ratio: float = 0.0) -> float:
    """LR multiplier: linear warmup to 1, then cosine decay to `min_lr_ratio` at `total_steps`."""
    if warmup_steps > 0 and step < warmup_steps:
        return (step + 1) / warmup_steps
    progress = (step - warmup_steps) / max(1, total_steps - warmup_steps)
    progress = min(max(progress, 0.0), 1.0)
    return min_lr_ratio + (1 - min_lr_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def build_scheduler(optimizer: torch.optim.Optimizer, cfg: TrainConfig, total_steps: int):
    """LambdaLR stepping once per optimizer step."""
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: warmup_cosine(s, cfg.warmup_steps, total_steps, cfg.min_lr_ratio)
    )
