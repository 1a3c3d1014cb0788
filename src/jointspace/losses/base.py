"""What every loss of the joint space shares: the context it reads, its parameters model, and where it is
computed under data parallelism (a flag, as open_clip's `ClipLoss(local_loss=...)`)."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from pydantic import BaseModel, ConfigDict
from torch import nn

from jointspace.errors import UsageError
from jointspace.losses.logits import LogitParameters
from jointspace.losses.masks import Exclusions


class LossParams(BaseModel):
    """A loss's own settings (config `loss.params`); a loss without any takes this empty model."""

    model_config = ConfigDict(extra="forbid")


@dataclass(frozen=True)
class LossContext:
    """What a loss reads besides embeddings and positives: its logit scale (exp of the learned
    log-temperature, clamped) and SigLIP's bias (`from_logits`: those of the loss's `LogitParameters`);
    under data parallelism, this rank's `rows` of the global batch and the gathered embeddings `a_all`,
    `b_all` of the pair being scored (set by `BindingLoss`); `excluded`: candidates left out of the pair's
    negatives over the global batch (a guide run's), if any; with extra candidates of b (`losses.extra`:
    mined hard negatives, every rank's), `extra` [E, D], which of them are positives of each anchor of the
    global batch `extra_positives` [N, E] and which exist `extra_valid` [E]."""

    logit_scale: torch.Tensor
    logit_bias: torch.Tensor | None = None
    rows: slice | None = None
    a_all: torch.Tensor | None = None
    b_all: torch.Tensor | None = None
    excluded: Exclusions | None = None
    extra: torch.Tensor | None = None
    extra_positives: torch.Tensor | None = None
    extra_valid: torch.Tensor | None = None

    @classmethod
    def from_logits(cls, logits: LogitParameters, detach: bool = False,
                    device: torch.device | str | None = None) -> LossContext:
        """The scale and the bias (None without one) of `logits`; `detach`: without their gradient (the
        micro-batches after the first of an accumulated step), `device`: moved there."""
        scale, bias = logits.scale(), logits.bias
        if detach:
            scale, bias = scale.detach(), bias.detach() if bias is not None else None
        if device is not None:
            scale, bias = scale.to(device), bias.to(device) if bias is not None else None
        return cls(scale, bias)


class PairLoss(nn.Module):
    """A loss between two modalities' normalised embeddings a [n, D] and b [n, D] with a positive mask.

    A subclass writes `full(a, b, positives, ctx)`: the loss of a whole batch, `positives` its [N, N] mask
    (None: the identity). Under data parallelism the base class either computes `full` on the gathered
    batch (every rank the same loss) or, with `local_loss` (open_clip's --local-loss), `local`: this rank's
    anchors against the gathered batch. A subclass that can only be computed one way says so
    (`always_local`). `uses_scale` / `uses_bias`: which logit parameters it reads; its class creates
    those (`logit_parameters`; the bias starting at `init_bias`) and no others, so that DDP waits for no
    gradient that nothing computes. `leaves_out`: it honours `ctx.excluded` (candidates that are neither
    positives nor negatives); one that cannot refuses them. `takes_extra`: whether it scores the extra
    candidates of `ctx.extra` as more columns of the a -> b direction (mined hard negatives).
    """

    Params: type[LossParams] = LossParams
    always_local = False
    uses_scale = True
    uses_bias = False
    init_bias = 0.0
    leaves_out = False
    takes_extra = False

    def __init__(self, params: LossParams | None = None, local_loss: bool = False):
        super().__init__()
        self.params = params if params is not None else self.Params()
        self.local_loss = local_loss or self.always_local

    @classmethod
    def logit_parameters(cls, init_temperature: float = 0.07, learn_temperature: bool = True,
                         max_logit_scale: float = 100.0) -> LogitParameters:
        """The parameters this loss scores with (config model.init_temperature, learn_temperature,
        max_logit_scale): a learned scale if it reads one (else the constant initial one), its bias if it reads one."""
        return LogitParameters(init_temperature, learn_temperature, max_logit_scale, learned=cls.uses_scale,
                               bias=cls.init_bias if cls.uses_bias else None)

    def forward(self, a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor | None,
                ctx: LossContext) -> torch.Tensor:
        if ctx.excluded is not None and not self.leaves_out:
            raise UsageError(f"loss {type(self).__name__} cannot leave candidates out of its negatives (loss.guide)")
        if ctx.rows is None:  # one process: the batch is all there is
            return self.full(a, b, positives, ctx)
        if self.local_loss:
            return self.local(a, b, positives, ctx)
        return self.full(ctx.a_all, ctx.b_all, positives, ctx)

    def full(self, a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor | None,
             ctx: LossContext) -> torch.Tensor:
        raise NotImplementedError

    def local(self, a: torch.Tensor, b: torch.Tensor, positives: torch.Tensor | None,
              ctx: LossContext) -> torch.Tensor:
        """This rank's rows `ctx.rows` as anchors against the gathered `ctx.a_all`, `ctx.b_all`;
        `positives` is the global mask."""
        raise NotImplementedError


def row_positives(positives: torch.Tensor | None, n: int, m: int, rows: slice | None,
                  device: torch.device) -> torch.Tensor:
    """[n, m] bool mask of the anchors `rows` (None: all n) against m candidates; None means identity."""
    if positives is not None:
        return positives[rows] if rows is not None else positives
    offset = rows.start if rows is not None else 0
    pos = torch.zeros(n, m, dtype=torch.bool, device=device)
    diag = torch.arange(n, device=device)
    pos[diag, diag + offset] = True
    return pos
