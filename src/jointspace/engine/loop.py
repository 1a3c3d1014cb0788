"""THE training loop, for every task: a task hands `fit` an Objective (the module to train, its batches,
its loss), an optimizer, a scheduler and a Plan; `fit` owns the rest, written once:

- epochs and steps, gradient accumulation (the objective splits a batch; the engine scales and sums),
- AMP (bf16 / fp16 autocast, a GradScaler for fp16), clipping, the stop on a non-finite loss,
- warmup + cosine (the scheduler steps once per optimizer step), logging and the progress bar,
- validation every `eval_every` epochs, atomic checkpoints (every `checkpoint_every` epochs and every
  `checkpoint_every_steps` steps) and exact resume from any of them (batches skipped, RNG restored,
  the metrics log cut back to the checkpoint so no step is logged twice),
- preemption (preempt.py): a signal stops the run at the next step boundary with a checkpoint.

Nothing here knows a task: the engine imports no task module. What a task hands over (`Objective`,
`StepContext`) and the device-side record of the first non-finite step (`Health`) are in objective.py.
"""

from __future__ import annotations

import contextlib
import contextvars
import math
import random
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from rich.progress import BarColumn, Progress, TextColumn, TimeRemainingColumn

from jointspace.engine.checkpoint import good_checkpoint, latest_checkpoint, resume_latest, save_checkpoint
from jointspace.engine.distributed import DistInfo, barrier, rank_rng_states
from jointspace.engine.objective import Health, Objective, StepContext
from jointspace.engine.precision import amp_dtype, autocast
from jointspace.engine.preempt import PreemptWatch
from jointspace.engine.tracking import Tracker
from jointspace.errors import JointspaceError, UsageError
from jointspace.preemption import DEFAULT_SIGNALS, Preempted, signal_number
from jointspace.run_dir import RunDir


class NonFiniteLossError(JointspaceError, RuntimeError):
    """The loss (or gradient norm) became NaN/inf; the run stopped without writing a checkpoint."""


def seed_everything(seed: int) -> None:
    """Seed python, numpy and torch."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


_EPOCH_HOOKS: contextvars.ContextVar[tuple[Callable[[int, dict], None], ...]] = \
    contextvars.ContextVar("epoch_hooks", default=())


@contextlib.contextmanager
def epoch_hook(fn: Callable[[int, dict], None]):
    """Call `fn(epoch, validation results)` after every validated epoch of any run trained inside this
    block, once that epoch's checkpoint is written (a sweep's pruner; an exception from it stops the run)."""
    token = _EPOCH_HOOKS.set(_EPOCH_HOOKS.get() + (fn,))
    try:
        yield
    finally:
        _EPOCH_HOOKS.reset(token)


def progress_bar(show: bool) -> Progress:
    """The rich progress bar of training (epoch, steps, loss, time left)."""
    return Progress(TextColumn("[bold]epoch {task.fields[epoch]}"), BarColumn(),
                    TextColumn("{task.completed}/{task.total}"), TextColumn("loss {task.fields[loss]:.4f}"),
                    TimeRemainingColumn(), disable=not show)


@dataclass
class Plan:
    """A run's schedule, as the engine needs it (each task fills it from its own config)."""

    steps_per_epoch: int
    total_steps: int
    log_every: int = 10
    eval_every: int = 1  # epochs
    checkpoint_every: int | None = 1  # epochs; None: step checkpoints (and the final one) only
    checkpoint_every_steps: int | None = None
    keep_checkpoints: int = 2
    grad_clip: float | None = 1.0
    amp: str = "none"
    accum_steps: int = 1
    preempt_signals: tuple[str, ...] = DEFAULT_SIGNALS

    @property
    def epochs(self) -> int:
        return math.ceil(self.total_steps / self.steps_per_epoch)


@dataclass
class FitResult:
    """What a finished fit reports to its task."""

    step: int
    start_step: int
    seconds: float
    train_seconds: float
    last_val: dict = field(default_factory=dict)
    epoch_losses: list[float] = field(default_factory=list)
    loss: float = float("nan")
    steps_per_epoch: int = 1

    @property
    def epochs_run(self) -> float:
        """Epochs trained by this process (fewer than planned after a resume)."""
        return (self.step - self.start_step) / self.steps_per_epoch


class Engine:
    """One training run of one objective (see the module docstring)."""

    def __init__(self, obj: Objective, optimizer: torch.optim.Optimizer, scheduler, plan: Plan, run_dir: Path,
                 tracker: Tracker, device: torch.device, dist: DistInfo | None = None):
        if plan.steps_per_epoch <= 0:
            raise UsageError("train.batch_size exceeds the training samples of one epoch")
        self.obj, self.optimizer, self.scheduler, self.plan = obj, optimizer, scheduler, plan
        self.ckpt_dir, self.tracker, self.device = RunDir(run_dir).checkpoints, tracker, device
        self.dist = dist or DistInfo()
        self.scaler = torch.amp.GradScaler(device.type, enabled=amp_dtype(device, plan.amp) == torch.float16)
        self.epoch, self.step, self.skip = 0, 0, 0
        self.health = Health(self.scaler.is_enabled())
        self.watch: PreemptWatch | None = None

    def resume(self) -> None:
        """Continue from the latest checkpoint: weights, optimizer, schedule, scaler, RNG, position."""
        if self.dist.is_main:  # checksums read once, by rank 0: a checkpoint failing them is set aside
            good_checkpoint(self.ckpt_dir)
        barrier(self.dist)
        state = resume_latest(self.ckpt_dir, self.obj.module, self.optimizer, self.scheduler, self.dist.rank)
        self.step = state["step"]
        self.epoch = state.get("epoch", self.step // self.plan.steps_per_epoch)  # older step-only states
        self.skip = state.get("batch_in_epoch", self.step - self.epoch * self.plan.steps_per_epoch)
        if state.get("scaler"):
            self.scaler.load_state_dict(state["scaler"])
        self.tracker.keep_until(self.step)
        self.obj.resumed(self.step)

    def stop_asked(self) -> str | None:
        """The preemption signal received, if any, on every rank alike: under torchrun the ranks agree on
        log steps (a collective where the engine reads anyway), so all stop after the same step."""
        asked = self.watch.requested if self.watch is not None else None
        if not self.dist.enabled:
            return asked
        if not self.logs_now():
            return None
        flag = torch.tensor([signal_number(asked) if asked else 0], device=self.device)
        torch.distributed.all_reduce(flag, op=torch.distributed.ReduceOp.MAX)
        return signal.Signals(int(flag)).name if int(flag) else None

    def stop(self, signal_name: str, epoch: int) -> None:
        """Write a mid-epoch checkpoint where the run stands and raise Preempted."""
        self.check_finite()
        name = f"step_{self.step:07d}"
        self.save(name, epoch, self.step - epoch * self.plan.steps_per_epoch)
        barrier(self.dist)
        self.tracker.close()
        raise Preempted(signal_name, self.step, self.plan.total_steps, epoch + 1, str(self.ckpt_dir / name))

    def save(self, name: str, epoch: int, in_epoch: int = 0) -> None:
        """Write a checkpoint: called on every rank (each has run check_finite just before); every rank's
        RNG state goes to rank 0 (a collective), which writes it, so each rank resumes with its own
        (validation, on rank 0 only, draws random numbers the other ranks do not)."""
        rank_rng = rank_rng_states(self.dist, self.device)
        if not self.dist.is_main:
            return
        state = {"epoch": epoch, "step": self.step, "batch_in_epoch": in_epoch,
                 "scheduler": self.scheduler.state_dict(), "scaler": self.scaler.state_dict()}
        save_checkpoint(self.ckpt_dir, name, self.obj.module, self.optimizer, state, keep=self.plan.keep_checkpoints,
                        rank_rng=rank_rng)

    def check_finite(self) -> None:
        """Raise NonFiniteLossError naming the first non-finite step since the run (re)started, on every
        rank alike. A host read: called where the engine reads anyway (log steps, checkpoints, epoch ends)."""
        bad = self.health.first_bad(self.dist)
        if bad is None:
            return
        step, loss, grad_norm = bad
        self.tracker.close()
        raise NonFiniteLossError(
            f"non-finite loss {loss} / grad norm {grad_norm} at step {step} "
            f"(epoch {(step - 1) // self.plan.steps_per_epoch + 1}). Stopped without saving at step {step}; last "
            f"good checkpoint: {latest_checkpoint(self.ckpt_dir) or 'none yet'} (resume with --resume)")

    def optimizer_step(self, batch: Any, epoch: int) -> tuple[torch.Tensor, dict]:
        """One optimizer step on one batch, with no host read: the loss (a tensor where it was computed) and
        the finiteness of loss and gradient norm are read when the engine logs or saves (check_finite)."""
        p, amp_ctx = self.plan, autocast(self.device, self.plan.amp)
        self.optimizer.zero_grad(set_to_none=True)
        ctx = StepContext(self.step, epoch, p.accum_steps, lambda: amp_ctx,
                          lambda loss: self.scaler.scale(loss).backward())
        loss, metrics = self.obj.backward(batch, ctx)
        self.scaler.unscale_(self.optimizer)
        grad_norm = torch.nn.utils.clip_grad_norm_(self.obj.clip_parameters(), p.grad_clip or float("inf"))
        self.health.watch(self.step + 1, loss, grad_norm)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        self.scheduler.step()
        self.obj.after_step(self.step)
        self.step += 1
        return loss, metrics

    def logs_now(self) -> bool:
        return self.step % self.plan.log_every == 0 or self.step == self.plan.total_steps

    def _log_step(self, loss: torch.Tensor, metrics: dict) -> float:
        """Write the step's log line (the host reads of a step happen here); returns the loss."""
        p = self.plan
        self.check_finite()
        value = float(loss)
        self.tracker.log({"step": self.step, "epoch": round(self.step / p.steps_per_epoch, 4), "split": "train",
                          "loss": value, "lr": self.scheduler.get_last_lr()[0],
                          **{k: float(v) for k, v in metrics.items()}, **self.obj.log_extras()})
        return value

    def run_epoch(self, epoch: int, on_step: Callable[[float | None], None]) -> list[torch.Tensor]:
        """Train one epoch (from the resumed position); returns the step losses (tensors where computed)."""
        p, losses = self.plan, []
        self.obj.train_mode()
        for batch in self.obj.batches(epoch, self.skip if epoch == self.epoch else 0):
            if self.step >= p.total_steps:
                break
            loss, metrics = self.optimizer_step(batch, epoch)
            losses.append(loss)
            on_step(self._log_step(loss, metrics) if self.logs_now() else None)
            in_epoch = self.step - epoch * p.steps_per_epoch
            every = p.checkpoint_every_steps
            if every and self.step % every == 0 and in_epoch < p.steps_per_epoch:
                self.check_finite()  # weights after a non-finite step are never saved
                self.save(f"step_{self.step:07d}", epoch, in_epoch)
            if (asked := self.stop_asked()) is not None:
                self.stop(asked, epoch)
        return losses

    def end_epoch(self, done: int, result: FitResult) -> None:
        """Validation and the epoch-end checkpoint."""
        self.check_finite()
        p, last, val = self.plan, done == self.plan.epochs, None
        if self.dist.is_main and (done % p.eval_every == 0 or last):
            val = self.obj.validate()
            if val is not None:
                result.last_val = val
                self.tracker.log({"step": self.step, "epoch": done, "split": "val", **val})
        by_steps = p.checkpoint_every_steps and self.step % p.checkpoint_every_steps == 0
        if p.checkpoint_every and (done % p.checkpoint_every == 0 or last):
            self.save(f"epoch_{done:04d}", done)
        elif not p.checkpoint_every and (by_steps or last):
            self.save(f"step_{self.step:07d}", done)
        barrier(self.dist)
        for hook in _EPOCH_HOOKS.get() if val is not None else ():
            hook(done, val)

    def fit(self, show_progress: bool = True) -> FitResult:
        """Train from the current position to `plan.total_steps`."""
        p, t0 = self.plan, time.time()
        result = FitResult(step=self.step, start_step=self.step, seconds=0.0, train_seconds=0.0,
                           steps_per_epoch=p.steps_per_epoch)
        with PreemptWatch(p.preempt_signals) as self.watch, progress_bar(show_progress and self.dist.is_main) as progress:
            task = progress.add_task("train", total=p.total_steps, completed=self.step, epoch=self.epoch + 1,
                                     loss=float("nan"))
            for epoch in range(self.epoch, p.epochs):
                t_epoch = time.perf_counter()
                losses = self.run_epoch(epoch, lambda v, e=epoch: progress.update(
                    task, advance=1, epoch=e + 1, **({} if v is None else {"loss": v})))
                result.train_seconds += time.perf_counter() - t_epoch
                self.end_epoch(epoch + 1, result)
                result.epoch_losses.append(float(torch.stack(losses).float().mean()) if losses else float("nan"))
                result.loss = float(losses[-1]) if losses else result.loss
        self.tracker.close()
        result.step, result.seconds = self.step, max(time.time() - t0, 1e-9)
        return result


def fit(obj: Objective, optimizer: torch.optim.Optimizer, scheduler, plan: Plan, run_dir: Path, tracker: Tracker,
        device: torch.device, resume: bool = False, show_progress: bool = True,
        dist: DistInfo | None = None) -> FitResult:
    """Train `obj` as planned (resuming from the run's latest checkpoint when asked); see Engine."""
    engine = Engine(obj, optimizer, scheduler, plan, run_dir, tracker, device, dist)
    if resume:
        engine.resume()
    return engine.fit(show_progress)

