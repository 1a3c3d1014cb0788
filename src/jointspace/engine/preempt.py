"""Preemption: clusters and spot machines signal a job before they kill it (SIGTERM from Kubernetes, spot
instances and Slurm; SIGUSR1 with Slurm's `--signal=USR1@90`). While a run trains, those signals
(`train.preempt_signals`) only set a flag; the engine stops at the next step boundary (under torchrun,
every rank at the same step: they agree on log steps), writes a mid-epoch checkpoint and raises
`Preempted`, which the CLI prints as one line naming the checkpoint and the command that resumes, with
exit code PREEMPTED_EXIT. A second signal while the checkpoint is written is noted and changes nothing.
"""

from __future__ import annotations

import signal
import threading
from collections.abc import Sequence

from jointspace.errors import JointspaceError, UsageError

PREEMPTED_EXIT = 75  # EX_TEMPFAIL: try again later (what a requeued job does)
DEFAULT_SIGNALS = ("SIGTERM", "SIGUSR1")


def signal_number(name: str) -> int:
    """SIGTERM / TERM / 15 -> the signal's number; anything else is a ValueError naming it."""
    text = str(name).strip().upper()
    if text.isdigit():
        return int(text)
    number = getattr(signal.Signals, text if text.startswith("SIG") else f"SIG{text}", None)
    if number is None or text in ("SIGKILL", "SIGSTOP", "KILL", "STOP"):
        raise UsageError(f"{name!r} is not a signal a run can catch (e.g. SIGTERM, SIGUSR1)")
    return int(number)


class Preempted(JointspaceError):
    """A run stopped by a preemption signal after writing a checkpoint; `--resume` continues it. (Not a
    RuntimeError: a sweep's caught trial errors must not swallow it.)"""

    def __init__(self, signal_name: str, step: int, total_steps: int, epoch: int, checkpoint: str):
        super().__init__(signal_name, step, total_steps, epoch, checkpoint)  # args: it pickles across processes
        self.signal_name, self.step, self.total_steps = signal_name, step, total_steps
        self.epoch, self.checkpoint = epoch, checkpoint

    def __str__(self) -> str:
        return (f"stopped by {self.signal_name} at step {self.step} of {self.total_steps} (epoch {self.epoch}); "
                f"checkpoint {self.checkpoint}")


class PreemptWatch:
    """While entered (in the main thread), the given signals set `requested` (the first one's name)
    instead of ending the process; the previous handlers come back on exit. Watches nest (a sweep's
    worker watches around the engine's): an inner one starts with what the outer one already heard, and
    what it heard goes back to the outer one on exit."""

    def __init__(self, names: Sequence[str] = DEFAULT_SIGNALS):
        self.numbers = [signal_number(n) for n in names]
        self.requested: str | None = None
        self.count = 0
        self._previous: dict[int, object] = {}

    def _handle(self, signum: int, _frame) -> None:
        self.count += 1
        self.requested = self.requested or signal.Signals(signum).name

    def __enter__(self) -> PreemptWatch:  # noqa: PYI034
        if threading.current_thread() is threading.main_thread():  # handlers can only be set there
            for n in self.numbers:
                self._previous[n] = signal.signal(n, self._handle)
        for outer in self._outer():
            self.requested = self.requested or outer.requested
        return self

    def __exit__(self, *exc) -> None:
        for outer in self._outer():
            outer.requested = outer.requested or self.requested
        for n, handler in self._previous.items():
            signal.signal(n, handler)
        self._previous.clear()

    def _outer(self) -> list[PreemptWatch]:
        """The watches whose handlers this one replaced."""
        return [h.__self__ for h in self._previous.values() if isinstance(getattr(h, "__self__", None), PreemptWatch)]
