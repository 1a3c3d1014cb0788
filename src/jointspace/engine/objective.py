"""What a task hands the engine (`Objective`, with the `StepContext` of each step) and what the engine keeps
on the device about a run's health (`Health`): the first non-finite step, read only when the engine reads."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from dataclasses import dataclass
from typing import Any

import torch
from torch import nn

from jointspace.engine.distributed import DistInfo
from jointspace.errors import UsageError


@dataclass
class StepContext:
    """What an objective's backward gets: where the run is, the autocast context and the scaled backward."""

    step: int  # optimizer steps done before this one
    epoch: int
    accum_steps: int
    autocast: Callable[[], Any]
    backward: Callable[[torch.Tensor], None]


class Objective:
    """What a task hands the engine. Subclasses set `module` (what is optimised and checkpointed) and
    define `batches` and `loss`; the rest has defaults."""

    module: nn.Module

    def batches(self, epoch: int, skip: int) -> Iterable[Any]:
        """This epoch's batches from batch `skip` on (the order a pure function of seed and epoch)."""
        raise NotImplementedError

    def loss(self, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """(loss, metrics to log) of one (micro-)batch."""
        raise NotImplementedError

    def split(self, batch: Any, n: int) -> list[Any]:
        """A batch as `n` micro-batches for accumulation."""
        if n == 1:
            return [batch]
        raise UsageError(f"train.accum_steps={n}: this task does not accumulate gradients")

    def size(self, batch: Any) -> int:
        """Samples in a (micro-)batch: micro-batch losses are weighted by their share."""
        return 1

    def backward(self, batch: Any, ctx: StepContext) -> tuple[torch.Tensor, dict]:
        """Forward + backward of one optimizer step; accumulation over micro-batches by default. The loss
        stays where it was computed (no host read inside a step: the engine reads it when it logs)."""
        micro = self.split(batch, ctx.accum_steps)
        total = sum(self.size(m) for m in micro)
        loss_sum, metrics = None, {}
        for part in micro:
            loss, metrics = self.loss(part, ctx)
            share = self.size(part) / total
            ctx.backward(loss * share)
            term = loss.detach().float() * share
            loss_sum = term if loss_sum is None else loss_sum + term
        return loss_sum, metrics

    def clip_parameters(self) -> Iterable[nn.Parameter]:
        return self.module.parameters()

    def train_mode(self) -> None:
        self.module.train()

    def after_step(self, step: int) -> None:
        """Called after each optimizer step (clamps, EMA updates), with the steps done before it."""

    def resumed(self, step: int) -> None:
        """Called after weights, optimizer and RNG came back from a checkpoint taken after `step` steps."""

    def log_extras(self) -> dict:
        """More values for the training log line (e.g. the temperature)."""
        return {}

    def validate(self) -> dict | None:
        """Validation metrics at an epoch's end, or None when there is nothing to validate on."""
        return None



class Health:
    """The first non-finite step of a run, kept on the device where loss and gradient norm are: watching
    a step reads nothing back to the host; `first_bad` does."""

    def __init__(self, scaler_skips: bool):
        self.scaler_skips = scaler_skips  # a GradScaler skips overflowing steps itself: only the loss counts
        self.bad: torch.Tensor | None = None  # [step (0: none), loss, grad norm]

    def watch(self, step: int, loss: torch.Tensor, grad_norm: torch.Tensor) -> None:
        loss = loss.detach().float().reshape(())
        grad_norm = grad_norm.detach().float().reshape(()).to(loss.device)
        bad = ~torch.isfinite(loss) if self.scaler_skips else ~(torch.isfinite(loss) & torch.isfinite(grad_norm))
        if self.bad is None:
            self.bad = loss.new_zeros(3)
        row = torch.stack([loss.new_full((), float(step)), loss, grad_norm])
        self.bad = torch.where(bad & (self.bad[0] == 0), row, self.bad)

    def first_bad(self, dist: DistInfo) -> tuple[int, float, float] | None:
        """(step, loss, grad norm) of the first non-finite step, or None; under torchrun every rank gets
        the same answer (the step: the latest rank's first; loss and norm: this rank's)."""
        if self.bad is None:
            return None
        step = self.bad[0].clone()
        if dist.enabled:  # NCCL reduces device tensors only; every rank stops together
            torch.distributed.all_reduce(step, op=torch.distributed.ReduceOp.MAX)
        if not bool(step > 0):
            return None
        _, loss, grad_norm = self.bad.tolist()
        return int(step), loss, grad_norm
