"""The parameters a loss scores with, created by the loss's class (`PairLoss.logit_parameters`) and carried
in the model's module tree (`JointModel.logits`: DDP all-reduces only the wrapped module's parameters, as
open_clip keeps `logit_scale` in its CLIP model): the learned log 1/temperature and SigLIP's bias."""

from __future__ import annotations

import math

import torch
from torch import nn

# the keys of these parameters in state dicts written before they moved here (JointModel's own)
OLD_KEYS = {"logit_scale": "log_scale", "logit_bias": "bias"}


class LogitParameters(nn.Module):
    """`log_scale`: log 1/temperature, clamped to log(max_logit_scale) as in CLIP; a parameter (trained when
    `learn_temperature`) for a loss that reads it (`learned`), else a constant buffer that no state dict
    holds (what the distillation term, a teacher and the open_clip export read: the initial scale).
    `bias`: a parameter starting at `bias`, only for a loss that reads one (SigLIP)."""

    def __init__(self, init_temperature: float = 0.07, learn_temperature: bool = True,
                 max_logit_scale: float = 100.0, learned: bool = True, bias: float | None = None):
        super().__init__()
        log_scale = torch.tensor(math.log(1.0 / init_temperature))
        if learned:
            self.log_scale = nn.Parameter(log_scale, requires_grad=learn_temperature)
        else:
            self.register_buffer("log_scale", log_scale, persistent=False)
        self.bias = nn.Parameter(torch.tensor(bias)) if bias is not None else None
        self.max_log_scale = math.log(max_logit_scale)

    def clamped(self) -> torch.Tensor:
        """log_scale as it is used: clamped to log(max_logit_scale)."""
        return self.log_scale.clamp(max=self.max_log_scale)

    def scale(self) -> torch.Tensor:
        """exp(log_scale), clamped to max_logit_scale as in CLIP."""
        return self.clamped().exp()

    @torch.no_grad()
    def clamp_(self) -> None:
        """Clamp the stored log_scale in place (after each optimizer step)."""
        self.log_scale.clamp_(max=self.max_log_scale)

    def rename_old_keys(self, state: dict, old_prefix: str, prefix: str) -> None:
        """In place: a state dict's old keys (`<old_prefix>logit_scale`, `<old_prefix>logit_bias`: these
        parameters when the model held them) under this module's names (`<prefix>log_scale`, `<prefix>bias`);
        a value this module has no place for (a bias, or the scale of a loss that reads none) is dropped."""
        own = set(self.state_dict())
        for old, name in OLD_KEYS.items():
            if old_prefix + old in state:
                value = state.pop(old_prefix + old)
                if name in own:
                    state[prefix + name] = value
